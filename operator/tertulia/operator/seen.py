"""What the watches have reported: every ChatBot as last seen, its workloads' readiness, its
ingest Jobs, and what keeps its pods from running (with the claims they wait for).

The operator keeps this cache itself rather than in kopf indexes. kopf holds every handler
back until its indexes have been filled, and filling them takes workers of their own, so a
bound on kopf's workers deadlocked a restart with many objects; without indexes the bound is
safe. The cache is filled by listing before any handler runs (so a status written right
after a restart is computed from every child, never from none) and then kept by the events.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from tertulia.operator.api import GROUP, PLURAL, VERSION, ChatBot
from tertulia.operator.render.common import MANAGED_BY, WATCH_LABEL
from tertulia.operator.status import Trouble, Workload, claim_trouble, pod_trouble

INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_LABEL = "app.kubernetes.io/managed-by"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
# What is listed at startup, cluster-wide: the ChatBots, and the children status reads.
# (kind, collection path, label selector)
COLLECTIONS = (
    ("ChatBot", f"/apis/{GROUP}/{VERSION}/{PLURAL}", ""),
    ("Deployment", "/apis/apps/v1/deployments", MANAGED_SELECTOR),
    ("StatefulSet", "/apis/apps/v1/statefulsets", MANAGED_SELECTOR),
    ("Job", "/apis/batch/v1/jobs", MANAGED_SELECTOR),
    ("Pod", "/api/v1/pods", MANAGED_SELECTOR),
    ("PersistentVolumeClaim", "/api/v1/persistentvolumeclaims", MANAGED_SELECTOR),
)


@dataclass(frozen=True)
class IngestJob:
    """An ingest Job as last seen: when it was made, its name, why it failed ('' unless)."""

    created: str
    name: str
    failed: str


@dataclass(frozen=True)
class Observed:
    """One ChatBot's children as last seen: its workloads by component, its ingest Jobs,
    and why its pods are not running, by component."""

    workloads: dict[str, Workload]
    ingest_jobs: tuple[IngestJob, ...]
    troubles: dict[str, list[Trouble]] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A claim as last seen: its component, storage class, and whether it is bound."""

    component: str
    storage_class: str | None
    bound: bool


Key = tuple[str, str]
# How many deleted ChatBots' uids are remembered (a few dozen bytes each).
GONE_KEPT = 10_000


class Seen:
    """Thread-safe: kopf runs the handlers that update it in a thread pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chatbots: dict[Key, dict[str, Any]] = {}
        # (namespace, instance) -> (kind, name) -> (component, workload)
        self._workloads: dict[Key, dict[Key, tuple[str, Workload]]] = {}
        # (namespace, instance) -> name -> job
        self._jobs: dict[Key, dict[str, IngestJob]] = {}
        # (namespace, instance) -> pod name -> (component, trouble); only pods with one
        self._pods: dict[Key, dict[str, tuple[str, Trouble]]] = {}
        # (namespace, instance) -> claim name -> claim
        self._claims: dict[Key, dict[str, Claim]] = {}
        # (namespace, pod name) -> the trouble last announced: a crash loop comes and goes
        # with every restart, and is announced once
        self._announced: dict[Key, Trouble] = {}
        # namespace -> the users' Secrets and ConfigMaps carrying the operator's watch label,
        # as (collection, name): the label comes off those no ChatBot names any more
        self._labelled: dict[str, set[Key]] = {}
        # The uids of ChatBots known to be deleted, oldest first: the events queued for one
        # before its deletion (each status write made one) must not bring it back.
        self._gone: dict[str, None] = {}

    def fill(self, kind: str, items: list[dict[str, Any]]) -> None:
        """The objects of one kind as a listing gave them (a list's items carry no kind)."""
        for item in items:
            self.saw({**item, "kind": kind})

    def saw(self, body: dict[str, Any], deleted: bool = False) -> bool:
        """An object as an event carried it; `deleted` when the event said it went. Returns
        whether what the ChatBot's status says of its pods may have changed (always, but for
        a pod whose trouble, or lack of one, is as it was)."""
        kind = body.get("kind")
        metadata = body.get("metadata") or {}
        namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
        if kind == "ChatBot":
            uid = metadata.get("uid")
            with self._lock:
                if uid in self._gone:
                    return False
                if deleted:
                    if uid:
                        self._gone[uid] = None
                    if len(self._gone) > GONE_KEPT:
                        del self._gone[next(iter(self._gone))]
                    current = self._chatbots.get((namespace, name))
                    # One made again under the name since (its own uid) stays.
                    if current is None or current["metadata"].get("uid") == uid:
                        self._chatbots.pop((namespace, name), None)
                        self._workloads.pop((namespace, name), None)
                        self._jobs.pop((namespace, name), None)
                else:
                    self._chatbots[namespace, name] = {
                        key: dict(body.get(key) or {}) for key in ("metadata", "spec", "status")
                    }
            return True
        labels = metadata.get("labels") or {}
        instance = labels.get(INSTANCE_LABEL)
        if not instance or kind not in _KINDS:
            return True
        owner, component = (namespace, str(instance)), str(labels.get(COMPONENT_LABEL))
        with self._lock:
            if kind == "Pod":
                return self._saw_pod(owner, name, component, None if deleted else body)
            if kind == "PersistentVolumeClaim":
                claims = self._claims.setdefault(owner, {})
                if deleted:
                    claims.pop(name, None)
                else:
                    spec, status = body.get("spec") or {}, body.get("status") or {}
                    claims[name] = Claim(
                        component, spec.get("storageClassName"), status.get("phase") == "Bound"
                    )
                return True
            if kind == "Job":
                jobs = self._jobs.setdefault(owner, {})
                if deleted:
                    jobs.pop(name, None)
                else:
                    jobs[name] = _ingest_job(body)
                return True
            workloads = self._workloads.setdefault(owner, {})
            if deleted:
                workloads.pop((kind, name), None)
            else:
                workloads[kind, name] = (component, _workload(body))
            return True

    def _saw_pod(self, owner: Key, name: str, component: str, body: dict[str, Any] | None) -> bool:
        pods = self._pods.setdefault(owner, {})
        trouble = pod_trouble(body) if body is not None else None
        before = pods.get(name)
        if trouble is None:
            pods.pop(name, None)
        else:
            pods[name] = (component, trouble)
        return (before[1] if before else None) != trouble

    def saw_labelled(self, collection: str, body: dict[str, Any], deleted: bool) -> None:
        """A Secret or ConfigMap the watch label selects, as an event carried it: kept when it
        is a user's (the operator's own go with their ChatBot)."""
        metadata = body.get("metadata") or {}
        namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
        labels = metadata.get("labels") or {}
        with self._lock:
            held = self._labelled.setdefault(namespace, set())
            if deleted or WATCH_LABEL not in labels or labels.get(MANAGED_LABEL) == MANAGED_BY:
                held.discard((collection, name))
            else:
                held.add((collection, name))

    def gone(self, uid: str) -> bool:
        """Whether the ChatBot of this uid is known to be deleted."""
        with self._lock:
            return uid in self._gone

    def labelled(self, namespace: str) -> set[Key]:
        with self._lock:
            return set(self._labelled.get(namespace, set()))

    def to_announce(self, pod: dict[str, Any], deleted: bool) -> Trouble | None:
        """The pod's trouble, when it is not the one last announced for that pod."""
        metadata = pod["metadata"]
        key = (str(metadata.get("namespace")), str(metadata["name"]))
        with self._lock:
            if deleted:
                self._announced.pop(key, None)
                return None
            trouble = pod_trouble(pod)
            if trouble is None or self._announced.get(key) == trouble:
                return None
            self._announced[key] = trouble
            return trouble

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
            pods = sorted(self._pods.get(key, {}).items())
            claims = dict(self._claims.get(key, {}))
        troubles: dict[str, list[Trouble]] = {}
        for _, (component, trouble) in pods:
            unbound = [
                claim_trouble(name, claim.storage_class)
                for name, claim in sorted(claims.items())
                if claim.component == component and not claim.bound
            ]
            # A pod the scheduler holds for its unbound claims: the claims are what to fix.
            waits_for_claims = (
                trouble.reason == "Unschedulable" and "PersistentVolumeClaim" in trouble.message
            )
            found = unbound if waits_for_claims and unbound else [trouble]
            known = troubles.setdefault(component, [])
            known.extend(item for item in found if item not in known)
        return Observed(workloads, jobs, troubles)


# The kinds whose objects are kept, but ChatBots.
_KINDS = ("Deployment", "StatefulSet", "Job", "Pod", "PersistentVolumeClaim")


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
