"""What the watches have reported: every ChatBot as last seen, its workloads' readiness, and
its ingest Jobs.

The operator keeps this cache itself rather than in kopf indexes. kopf holds every handler
back until its indexes have been filled, and filling them takes workers of their own, so a
bound on kopf's workers deadlocked a restart with many objects; without indexes the bound is
safe. The cache is filled by listing before any handler runs (so a status written right
after a restart is computed from every child, never from none) and then kept by the events.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from tertulia.operator.api import GROUP, PLURAL, VERSION, ChatBot
from tertulia.operator.render.common import MANAGED_BY
from tertulia.operator.status import Workload

INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
# What is listed at startup, cluster-wide: the ChatBots, and the children status reads.
# (kind, collection path, label selector)
COLLECTIONS = (
    ("ChatBot", f"/apis/{GROUP}/{VERSION}/{PLURAL}", ""),
    ("Deployment", "/apis/apps/v1/deployments", MANAGED_SELECTOR),
    ("StatefulSet", "/apis/apps/v1/statefulsets", MANAGED_SELECTOR),
    ("Job", "/apis/batch/v1/jobs", MANAGED_SELECTOR),
)


@dataclass(frozen=True)
class IngestJob:
    """An ingest Job as last seen: when it was made, its name, why it failed ('' unless)."""

    created: str
    name: str
    failed: str


@dataclass(frozen=True)
class Observed:
    """One ChatBot's children as last seen: its workloads by component, its ingest Jobs."""

    workloads: dict[str, Workload]
    ingest_jobs: tuple[IngestJob, ...]


Key = tuple[str, str]


class Seen:
    """Thread-safe: kopf runs the handlers that update it in a thread pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chatbots: dict[Key, dict[str, Any]] = {}
        # (namespace, instance) -> (kind, name) -> (component, workload)
        self._workloads: dict[Key, dict[Key, tuple[str, Workload]]] = {}
        # (namespace, instance) -> name -> job
        self._jobs: dict[Key, dict[str, IngestJob]] = {}

    def fill(self, kind: str, items: list[dict[str, Any]]) -> None:
        """The objects of one kind as a listing gave them (a list's items carry no kind)."""
        for item in items:
            self.saw({**item, "kind": kind})

    def saw(self, body: dict[str, Any], deleted: bool = False) -> None:
        """An object as an event carried it; `deleted` when the event said it went."""
        kind = body.get("kind")
        metadata = body.get("metadata") or {}
        namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
        if kind == "ChatBot":
            with self._lock:
                if deleted:
                    self._chatbots.pop((namespace, name), None)
                    self._workloads.pop((namespace, name), None)
                    self._jobs.pop((namespace, name), None)
                else:
                    self._chatbots[namespace, name] = {
                        key: dict(body.get(key) or {}) for key in ("metadata", "spec", "status")
                    }
            return
        labels = metadata.get("labels") or {}
        instance = labels.get(INSTANCE_LABEL)
        if not instance or kind not in ("Deployment", "StatefulSet", "Job"):
            return
        owner = (namespace, str(instance))
        with self._lock:
            if kind == "Job":
                jobs = self._jobs.setdefault(owner, {})
                if deleted:
                    jobs.pop(name, None)
                else:
                    jobs[name] = _ingest_job(body)
                return
            workloads = self._workloads.setdefault(owner, {})
            if deleted:
                workloads.pop((kind, name), None)
            else:
                workloads[kind, name] = (str(labels.get(COMPONENT_LABEL)), _workload(body))

    def chatbot(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._chatbots.get((namespace, name))

    def chatbots(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every ChatBot seen, or those of one namespace."""
        with self._lock:
            return [
                body
                for (bot_namespace, _), body in self._chatbots.items()
                if namespace is None or bot_namespace == namespace
            ]

    def observed(self, bot: ChatBot) -> Observed:
        key = (bot.namespace, bot.name)
        with self._lock:
            workloads = dict(self._workloads.get(key, {}).values())
            jobs = tuple(self._jobs.get(key, {}).values())
        return Observed(workloads, jobs)


def _workload(body: dict[str, Any]) -> Workload:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    return Workload(
        replicas=int(spec.get("replicas", 1)), ready=int(status.get("readyReplicas") or 0)
    )


def _ingest_job(body: dict[str, Any]) -> IngestJob:
    metadata, status = body.get("metadata") or {}, body.get("status") or {}
    failed = next(
        (
            str(condition.get("reason", "Failed"))
            for condition in status.get("conditions") or []
            if condition.get("type") == "Failed" and condition.get("status") == "True"
        ),
        "",
    )
    return IngestJob(str(metadata.get("creationTimestamp") or ""), str(metadata["name"]), failed)
