"""The CRD is generated from the API models, documented everywhere, and checked in fresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tertulia.operator.crd import chatbot_crd, crd_yaml
from tertulia.operator.reference import reference_markdown

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "path", ["charts/tertulia/crds/chatbots.tertulia.dev.yaml", "manifests/crd.yaml"]
)
def test_checked_in_crd_is_what_the_code_generates(path: str) -> None:
    assert (REPO / path).read_text() == crd_yaml(), f"{path} is stale: run `make generate`"


def test_configuration_reference_is_what_the_schema_generates() -> None:
    checked_in = (REPO / "docs" / "configuration.md").read_text()
    assert checked_in == reference_markdown(), "docs/configuration.md is stale: `make generate`"


def test_configuration_reference_lists_every_spec_field() -> None:
    text = reference_markdown()
    spec = schema()["properties"]["spec"]
    fields = [path for path, _ in walk(spec, "spec") if path != "spec" and path[-2:] != "[]"]
    assert len(fields) > 60
    missing = [path for path in fields if f"| `{path}` |" not in text]
    assert missing == []


def walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += walk(child, f"{path}.{name}")
    if "items" in node:
        found += walk(node["items"], f"{path}[]")
    return found


def schema() -> dict[str, Any]:
    version = chatbot_crd()["spec"]["versions"][0]
    root: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return root


def test_every_spec_and_status_field_has_a_description_for_kubectl_explain() -> None:
    missing = [
        path
        for path, node in walk(schema(), "")
        if path.startswith((".spec", ".status"))
        and not path.endswith("[]")
        and not node.get("description")
    ]
    assert missing == []


def test_every_node_is_structural() -> None:
    for path, node in walk(schema(), ""):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not {"$ref", "anyOf", "allOf", "title"} & node.keys(), path


def test_scale_subresource_points_at_the_model_server() -> None:
    version = chatbot_crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.model.replicas",
        "statusReplicasPath": ".status.model.replicas",
        "labelSelectorPath": ".status.model.selector",
    }
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns[:3] == ["Engine", "Model", "Ready"]
    assert {"Platforms", "Phase", "Age"} <= set(columns)
    assert chatbot_crd()["spec"]["names"]["shortNames"] == ["cb"]


def test_bounds_are_in_openapi_v3_0s_form_which_the_api_server_reads() -> None:
    # JSON Schema's numeric exclusiveMinimum makes the API server refuse the whole CRD.
    nodes = [node for _, node in walk(schema(), "")]
    exclusive = [node for node in nodes if "exclusiveMinimum" in node or "exclusiveMaximum" in node]
    assert exclusive, "gpuMemoryUtilization has an exclusive bound"
    for node in exclusive:
        for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if key in node:
                assert node[key] is True and bound in node
