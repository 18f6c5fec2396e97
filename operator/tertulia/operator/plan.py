"""What to change: apply every desired object, delete owned objects no longer desired."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]


@dataclass(frozen=True, order=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str

    @classmethod
    def of(cls, manifest: Manifest) -> ObjectRef:
        return cls(manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"])


@dataclass(frozen=True)
class Plan:
    apply: list[Manifest] = field(default_factory=list)
    delete: list[ObjectRef] = field(default_factory=list)


def plan(observed: list[ObjectRef], desired: list[Manifest]) -> Plan:
    """Apply all of `desired` (server-side apply makes an unchanged object a no-op) and delete
    the observed objects that are not desired any more."""
    wanted = {ObjectRef.of(manifest) for manifest in desired}
    return Plan(apply=list(desired), delete=sorted(ref for ref in observed if ref not in wanted))
