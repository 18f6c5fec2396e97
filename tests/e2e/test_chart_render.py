"""The chart as helm renders it, without a cluster: strict lint of each documented values
file, the schema's refusals, the air-gapped mirror and metrics options, and install.yaml kept
fresh. In the e2e tier, which has the test bed's helm."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    container: dict[str, Any] = _operator_deployment(rendered)["spec"]["template"]["spec"][
        "containers"
    ][0]
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
    # ... by their tags, as the mirror re-pushed them.
    assert env["TERTULIA_IMAGE_DIGESTS"] == "false"
    assert json.loads(env["TERTULIA_METRICS_SCRAPERS"]) == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}
    }
    plain = {
        item["name"]
        for item in _operator_container(helm("template", "t", str(CHART), home=tmp_path).stdout)[
            "env"
        ]
    }
    assert (
        not {"TERTULIA_IMAGE_REGISTRY", "TERTULIA_IMAGE_DIGESTS", "TERTULIA_METRICS_SCRAPERS"}
        & plain
    )


def test_a_service_monitor_lets_the_monitoring_namespace_scrape_by_default(tmp_path: Path) -> None:
    rendered = helm(
        "template", "t", str(CHART), "--set", "metrics.serviceMonitor.enabled=true", home=tmp_path
    ).stdout
    env = {item["name"]: item["value"] for item in _operator_container(rendered)["env"]}
    assert json.loads(env["TERTULIA_METRICS_SCRAPERS"]) == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }


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


def _operator_deployment(rendered: str) -> dict[str, Any]:
    (deployment,) = [
        doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Deployment"
    ]
    return dict(deployment)


def test_one_operator_is_replaced_by_recreating_it_and_peers_roll(tmp_path: Path) -> None:
    """Without peering, an upgrade's new operator must not run beside the old one: each would
    converge the ChatBots with its own version and prune what the other rendered."""
    alone = _operator_deployment(helm("template", "t", str(CHART), home=tmp_path).stdout)
    assert alone["spec"]["strategy"] == {"type": "Recreate"}
    peers = _operator_deployment(
        helm("template", "t", str(CHART), "--set", "replicaCount=2", home=tmp_path).stdout
    )
    assert "strategy" not in peers["spec"]  # a rolling update: peering keeps one at work
