"""The chart's files as files, with no tool: every value documented, the dashboard's
queries, and example Secrets that match what the examples read. What helm renders is tested
in tests/e2e/test_chart_render.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from tertulia.gateway.metrics import GatewayMetrics
from tests.examples import chatbot_document

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tertulia"


def test_every_top_level_value_is_documented_by_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = [
        line.split(":")[0]
        for index, line in enumerate(lines)
        if re.match(r"^[a-zA-Z]\w*:", line) and not lines[index - 1].startswith("#")
    ]
    assert undocumented == []


def test_dashboard_queries_only_metrics_the_gateway_exports() -> None:
    dashboard = json.loads((CHART / "dashboards" / "tertulia.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(tertulia_gateway_\w+)", target["expr"])
    }
    exported = {
        line.split()[2]
        for line in generate_latest(GatewayMetrics.create().registry).decode().splitlines()
        if line.startswith("# TYPE")
    }

    # Counters are exported as NAME_total, histograms as NAME_bucket: match the family.
    def family(name: str) -> str:
        return re.sub(r"_(total|bucket|sum|count)$", "", name)

    assert queried
    assert {family(name) for name in queried} <= {family(name) for name in exported}


def _secret_refs(node: Any) -> set[tuple[str, str]]:
    """Every (Secret, key) a ChatBot spec names, wherever it names one."""
    found: set[tuple[str, str]] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("SecretRef") and isinstance(value, dict) and "key" in value:
                found.add((value["name"], value["key"]))
            else:
                found |= _secret_refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= _secret_refs(item)
    return found


@pytest.mark.parametrize(
    "example",
    sorted((REPO / "manifests" / "examples").glob("*.yaml")),
    ids=lambda path: path.stem,
)
def test_each_examples_secret_template_holds_every_key_it_reads(example: Path) -> None:
    needed = _secret_refs(chatbot_document(example)["spec"])
    template = REPO / "manifests" / "examples" / "secrets" / example.name
    if not needed:
        assert not template.exists()
        return
    provided = {
        (doc["metadata"]["name"], key)
        for doc in yaml.safe_load_all(template.read_text())
        for key in doc["stringData"]
    }
    assert provided == needed
