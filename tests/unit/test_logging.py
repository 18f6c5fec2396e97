"""The JSON log lines every process writes."""

from __future__ import annotations

import json
import logging

from tertulia.common.logging import JsonFormatter


def test_a_record_is_one_json_object_with_its_extras_but_not_kopfs_settings() -> None:
    record = logging.LogRecord(
        "kopf.objects", logging.INFO, "", 0, "Handler succeeded.", None, None
    )
    # What kopf attaches to the records about an object.
    record.k8s_ref = {"namespace": "bots", "name": "helpdesk"}
    record.settings = object()
    record.k8s_skip = False
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "Handler succeeded."
    assert entry["level"] == "info" and entry["logger"] == "kopf.objects"
    assert entry["k8s_ref"] == {"namespace": "bots", "name": "helpdesk"}
    assert "settings" not in entry and "k8s_skip" not in entry


def test_protected_values_and_token_shapes_never_reach_a_line() -> None:
    from tertulia.common.logging import protect, redact

    protect("per-process-secret-value")
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        "",
        0,
        "HTTP Request: POST %s",
        ("https://api.telegram.org/bot7000000001:AAFakeTelegramTokenForTheTestBed000000/getMe",),
        None,
    )
    record.headers = {"authorization": "Bearer per-process-secret-value"}
    try:
        raise RuntimeError("connect to redis://:hunter2-redis-pass@redis:6379 failed")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    for secret in ("AAFakeTelegram", "per-process-secret-value", "hunter2-redis-pass"):
        assert secret not in line
    assert "bot7000000001:[redacted]" in line
    assert (
        redact("xoxb-1234-5678-abcdefgh and xapp-1-A0-12345-abcdef") == "[redacted] and [redacted]"
    )
    # What only looks like a token's neighbour stays readable.
    assert redact("at 12:30:45, 3 of 10 passed") == "at 12:30:45, 3 of 10 passed"
