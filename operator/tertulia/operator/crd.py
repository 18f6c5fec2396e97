"""The ChatBot CRD, generated from the models in `api.py`: the YAML under charts/ and
manifests/ is this module's output (`tertulia operator crd`), and a test fails when stale.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from tertulia.operator.api import (
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    PLURAL,
    VERSION,
    AutoscalingStatus,
    ChatBotSpec,
    ChatBotStatus,
    cel,
    rule,
)

_KEPT_KEYWORDS = {
    "type", "description", "default", "enum", "pattern", "minLength", "maxLength",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
    "x-kubernetes-validations", "format",
}  # fmt: skip


def structural(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """Turn a pydantic JSON schema node into a Kubernetes structural schema node:
    references inlined, optionals unwrapped, free-form objects marked to keep their fields."""
    if "$ref" in schema:
        target = definitions[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        if "x-kubernetes-validations" in target and "x-kubernetes-validations" in schema:
            merged["x-kubernetes-validations"] = target["x-kubernetes-validations"]
        return structural(merged, definitions)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        outer = {k: v for k, v in schema.items() if k != "anyOf"}
        if len(options) != 1:
            raise ValueError(f"unions have no structural form: {schema}")
        node = structural(options[0], definitions)
        node.update({k: v for k, v in outer.items() if k in _KEPT_KEYWORDS and k != "default"})
        if outer.get("default") is not None:
            node["default"] = outer["default"]
        return node
    node = {key: value for key, value in schema.items() if key in _KEPT_KEYWORDS}
    # JSON Schema's exclusive bounds are numbers; OpenAPI v3.0's, which Kubernetes speaks,
    # are flags on minimum and maximum.
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(exclusive), int | float) and not isinstance(node[exclusive], bool):
            node[bound] = node.pop(exclusive)
            node[exclusive] = True
    if "const" in schema:
        node["enum"] = [schema["const"]]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        node["type"] = "object"
        properties = schema.get("properties", {})
        if properties:
            node["properties"] = {
                name: structural(child, definitions) for name, child in properties.items()
            }
            if schema.get("required"):
                node["required"] = sorted(schema["required"])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            node["additionalProperties"] = structural(extra, definitions)
        elif not properties and extra is not False:
            node["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        node["items"] = structural(schema.get("items", {"type": "object"}), definitions)
    elif kind is None and not node.get("x-kubernetes-preserve-unknown-fields"):
        node["type"] = "object"
        node["x-kubernetes-preserve-unknown-fields"] = True
    return node


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    generated = model.model_json_schema(by_alias=True)
    return structural(generated, generated.get("$defs", {}))


PRINTER_COLUMNS = [
    {"name": "Engine", "type": "string", "jsonPath": ".spec.model.engine"},
    {"name": "Model", "type": "string", "jsonPath": ".status.model.name"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.model.readyReplicas"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.model.replicas", "priority": 1},
    {"name": "Platforms", "type": "string", "jsonPath": ".status.platforms"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Reason",
        "type": "string",
        "description": "Why it is not Ready: the first component's reason.",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _status_schema() -> dict[str, Any]:
    """The operator's status, and the autoscaler's, which the gateway writes (so the
    operator's merge patches never carry it)."""
    schema = schema_of(ChatBotStatus)
    autoscaling = schema_of(AutoscalingStatus)
    autoscaling["description"] = (
        "The model autoscaler's last decision, written by the gateway that leads it."
    )
    schema["properties"]["autoscaling"] = autoscaling
    return schema


def chatbot_crd() -> dict[str, Any]:
    root = {
        "type": "object",
        "description": "A private LLM chatbot: Tertulia's operator builds its model server, "
        "gateway, knowledge base and one bot per chat platform.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "tertulia.dev/v1alpha1"},
            "kind": {"type": "string", "description": "ChatBot"},
            "metadata": {"type": "object"},
            "spec": schema_of(ChatBotSpec),
            "status": _status_schema(),
        },
        **cel(
            rule(
                f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                f"metadata.name must be at most {MAX_NAME_LENGTH} characters: "
                "the names of the objects made for it add a suffix",
            )
        ),
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "tertulia", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["cb"],
                "categories": ["tertulia"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.model.replicas",
                            "statusReplicasPath": ".status.model.replicas",
                            "labelSelectorPath": ".status.model.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `tertulia operator crd` from operator/tertulia/operator/api.py.\n"
    return header + yaml.safe_dump(chatbot_crd(), sort_keys=False, width=100)
