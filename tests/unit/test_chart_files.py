"""The chart and the install files without a cluster: lint, the values schema, generated files
kept fresh, the dashboard's queries, and example Secrets that match what the examples read."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from tertulia.gateway.metrics import GatewayMetrics
from tests.examples import chatbot_document
from tests.testbed.paths import binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tertulia"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def helm(*args: str, check: bool = True, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("helm")), *args],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=check,
    )


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.stem)
def test_chart_lints_strictly_with_each_documented_values_file(
    values: Path, tmp_path: Path
) -> None:
    result = helm("lint", "--strict", str(CHART), "-f", str(values), check=False, home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("replicaCount=0", "/replicaCount"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("watchNamespaces[0]=Team_A", "/watchNamespaces/0"),
        ("metrics.serviceMonitor.interval=soon", "/metrics/serviceMonitor/interval"),
        ("healthPort=80", "/healthPort"),
        ("replicas=2", "'replicas' not allowed"),
    ],
)
def test_values_schema_refuses_bad_values_naming_them(
    setting: str, named: str, tmp_path: Path
) -> None:
    result = helm("template", "t", str(CHART), "--set", setting, check=False, home=tmp_path)
    assert result.returncode != 0
    assert named in result.stderr


def _operator_container(rendered: str) -> dict[str, Any]:
    (deployment,) = [
        doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Deployment"
    ]
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_a_mirror_serves_the_operator_its_workloads_and_what_chatbots_run(tmp_path: Path) -> None:
    values = CHART / "ci" / "mirror-values.yaml"
    rendered = helm("template", "t", str(CHART), "-f", str(values), home=tmp_path).stdout
    container = _operator_container(rendered)
    env = {item["name"]: item["value"] for item in container["env"]}
    assert container["image"].startswith("registry.internal:5000/mirror/tertulia/operator:")
    assert env["TERTULIA_IMAGE"].startswith("registry.internal:5000/mirror/tertulia/tertulia:")
    # The operator renders the third-party images through the same mirror.
    assert env["TERTULIA_IMAGE_REGISTRY"] == "registry.internal:5000/mirror"
    assert json.loads(env["TERTULIA_METRICS_SCRAPERS"]) == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}
    }
    plain = {
        item["name"]
        for item in _operator_container(helm("template", "t", str(CHART), home=tmp_path).stdout)[
            "env"
        ]
    }
    assert not {"TERTULIA_IMAGE_REGISTRY", "TERTULIA_METRICS_SCRAPERS"} & plain


def test_a_service_monitor_lets_the_monitoring_namespace_scrape_by_default(tmp_path: Path) -> None:
    rendered = helm(
        "template", "t", str(CHART), "--set", "metrics.serviceMonitor.enabled=true", home=tmp_path
    ).stdout
    env = {item["name"]: item["value"] for item in _operator_container(rendered)["env"]}
    assert json.loads(env["TERTULIA_METRICS_SCRAPERS"]) == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }


def test_every_top_level_value_is_documented_by_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = [
        line.split(":")[0]
        for index, line in enumerate(lines)
        if re.match(r"^[a-zA-Z]\w*:", line) and not lines[index - 1].startswith("#")
    ]
    assert undocumented == []


def test_install_yaml_is_the_chart_rendered_now() -> None:
    rendered = subprocess.run(
        ["bash", str(REPO / "hack" / "render-install.sh")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (REPO / "manifests" / "install.yaml").read_text() == rendered, (
        "manifests/install.yaml is stale: run `make generate`"
    )
    kinds = [doc["kind"] for doc in yaml.safe_load_all(rendered) if doc]
    assert kinds[0] == "Namespace"
    assert kinds.count("CustomResourceDefinition") == 3
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"} <= set(kinds)


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
