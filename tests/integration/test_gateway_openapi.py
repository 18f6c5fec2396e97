"""Schemathesis reads the gateway's OpenAPI document and sends what it allows, valid and
not: no request may end in a server error (5xx) while the backend is healthy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.testbed.servers import start_fake_backend, start_gateway


@pytest.fixture(scope="module")
def gateway_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenApiSchema]:
    workdir: Path = tmp_path_factory.mktemp("schemathesis")
    backend, backend_url = start_fake_backend(workdir)
    gateway, gateway_url = start_gateway(
        workdir,
        {
            "BACKEND__URL": backend_url,
            "RATE_LIMIT__ENABLED": "false",
            "MODERATION__BLOCKED_TERMS": '["contraband"]',
        },
    )
    try:
        yield schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")
    finally:
        gateway.stop()
        backend.stop()


def test_no_request_the_schema_allows_ends_in_a_server_error(gateway_schema: OpenApiSchema) -> None:
    # Driven through Hypothesis directly: one property per API operation.
    operations = [result.ok() for result in gateway_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/chat", "/chat/stream", "/v1/chat/completions"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def no_server_error(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(checks=[not_a_server_error], timeout=30)

        no_server_error()
