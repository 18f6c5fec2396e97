"""docs/configuration.md: every ChatBot field, generated from the CRD's schema so the
reference cannot drift from what the API server accepts (`tertulia operator reference`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tertulia.operator.crd import chatbot_crd

_HEADER = """# ChatBot configuration reference

Every field of a `ChatBot` (`tertulia.dev/v1alpha1`), generated from the CRD's schema by
`tertulia operator reference` (`make generate`); a test fails when this file is stale.
`kubectl explain chatbot.spec.model` shows the same text in a cluster. Examples are in
`manifests/examples/`; how the operator uses each part is in [operator.md](operator.md).
"""


def _fields(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, prop in schema.get("properties", {}).items():
        here = f"{path}.{name}"
        yield here, prop
        if prop.get("type") == "array" and "properties" in prop.get("items", {}):
            yield from _fields(prop["items"], f"{here}[]")
        else:
            yield from _fields(prop, here)


def _constraints(prop: dict[str, Any]) -> str:
    parts = []
    if "enum" in prop:
        parts.append("one of " + ", ".join(f"`{value}`" for value in prop["enum"]))
    if "minimum" in prop:
        parts.append(f"{'>' if prop.get('exclusiveMinimum') else '≥'} {prop['minimum']}")
    if "maximum" in prop:
        parts.append(f"{'<' if prop.get('exclusiveMaximum') else '≤'} {prop['maximum']}")
    if "minLength" in prop:
        parts.append(f"length ≥ {prop['minLength']}")
    if "maxLength" in prop:
        parts.append(f"length ≤ {prop['maxLength']}")
    if "pattern" in prop:
        parts.append(f"matches `{prop['pattern']}`")
    parts.extend(rule["message"] for rule in prop.get("x-kubernetes-validations", []))
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(path: str, prop: dict[str, Any], note: str = "") -> str:
    kind = prop.get("type", "object")
    if kind == "array":
        kind = f"array of {prop.get('items', {}).get('type', 'object')}"
    default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
    description = prop.get("description", "") + note
    return (
        f"| `{path}` | {kind} | {_cell(default)} | {_cell(_constraints(prop))} "
        f"| {_cell(description)} |"
    )


def reference_markdown() -> str:
    """One section per top-level part of the spec, a table row per field below it."""
    schema = chatbot_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    table = "| field | type | default | rules | description |\n| --- | --- | --- | --- | --- |"
    lines = [_HEADER, f"## `spec`\n\n{spec.get('description', '')}\n", table]
    sections = {
        name: prop for name, prop in spec["properties"].items() if prop.get("type") == "object"
    }
    for name, prop in spec["properties"].items():
        if name in sections:
            lines.append(_row(f"spec.{name}", prop, " (below)"))
        else:
            lines += [
                _row(path, field) for path, field in _fields({"properties": {name: prop}}, "spec")
            ]
    for name, section in sections.items():
        lines += ["", f"## `spec.{name}`\n\n{section.get('description', '')}\n", table]
        lines += [_row(path, prop) for path, prop in _fields(section, f"spec.{name}")]
    return "\n".join(lines) + "\n"
