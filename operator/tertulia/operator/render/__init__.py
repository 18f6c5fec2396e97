"""Desired state as pure functions: a ChatBot in, the manifests of one component out.
No client calls here; the handlers apply what these return.
"""

from __future__ import annotations

from typing import Any

from tertulia.operator.api import ChatBot
from tertulia.operator.render.common import Installation, Manifest
from tertulia.operator.render.embeddings import render_embeddings
from tertulia.operator.render.gateway import render_gateway
from tertulia.operator.render.images import unpinned
from tertulia.operator.render.knowledge import render_knowledge_base
from tertulia.operator.render.memory import render_memory
from tertulia.operator.render.model import render_model_server
from tertulia.operator.render.network import render_network_policies, render_service_account
from tertulia.operator.render.platforms import render_platforms


def render_all(
    bot: ChatBot,
    *,
    image: str,
    installation: Installation | None = None,
    ready_platforms: set[str] | None = None,
    source_digests: dict[str, str] | None = None,
    secret_versions: dict[str, str] | None = None,
) -> list[Manifest]:
    """Every object the ChatBot needs; platforms whose Secrets are missing are left out.
    `image` is Tertulia's; `installation` says where third-party images are mirrored, whether
    they keep their digests, and who scrapes metrics; `source_digests` are the knowledge
    sources' ConfigMap contents, hashed by name; `secret_versions` the resourceVersions of
    the Secrets its pods read, by name, so a changed Secret rolls them."""
    installation = installation or Installation()
    registry = installation.registry
    manifests = [
        *render_service_account(bot),
        *render_model_server(bot, image=image, registry=registry),
        *render_memory(bot, registry=registry, secret_versions=secret_versions),
        *render_gateway(bot, image=image, secret_versions=secret_versions),
        *render_embeddings(bot, image=image, registry=registry),
        *render_knowledge_base(
            bot,
            image=image,
            registry=registry,
            source_digests=source_digests,
            secret_versions=secret_versions,
        ),
        *render_platforms(bot, image=image, only=ready_platforms, secret_versions=secret_versions),
        *render_network_policies(bot, installation),
    ]
    for manifest in manifests:
        _say_why_on_failure(manifest)
        if not installation.digests:
            _unpin(manifest)
    return manifests


# Kinds whose pods the operator renders, and where their pod template sits.
_POD_TEMPLATES = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "Job": ("spec", "template"),
}


def _containers(manifest: Manifest) -> list[dict[str, Any]]:
    path = _POD_TEMPLATES.get(manifest["kind"])
    if path is None:
        return []
    spec = manifest[path[0]][path[1]]["spec"]
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _unpin(manifest: Manifest) -> None:
    """The third-party images by tag alone (images.unpinned)."""
    for container in _containers(manifest):
        container["image"] = unpinned(container["image"])


def _say_why_on_failure(manifest: Manifest) -> None:
    """Every container ends with its last log lines as its termination message when it
    wrote none (FallbackToLogsOnError): a crash loop's cause then reaches the ChatBot's
    status without the operator reading any log."""
    for container in _containers(manifest):
        container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")


__all__ = ["Installation", "Manifest", "render_all"]
