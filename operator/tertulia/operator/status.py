"""The ChatBot's status from what its children report: conditions, phase, model replicas."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any

from tertulia.common.logging import redact
from tertulia.operator.api import (
    CONDITION_TYPES,
    ChatBot,
    ChatBotSpec,
    ChatBotStatus,
    Condition,
    EndpointsStatus,
    ModelStatus,
    Phase,
)
from tertulia.operator.render.embeddings import runs_embeddings_server
from tertulia.operator.render.gateway import gateway_url
from tertulia.operator.render.model import model_selector, served_model_name


@dataclass(frozen=True)
class Workload:
    """A Deployment or StatefulSet as last seen: replicas asked for, and Ready."""

    replicas: int
    ready: int

    @property
    def is_ready(self) -> bool:
        return self.ready >= self.replicas


@dataclass(frozen=True)
class Trouble:
    """Why a component's pods are not Ready, in words a user can act on, as the cluster
    says it: the scheduler's message, the image pull's, a crash loop's last words."""

    reason: str
    message: str


# How much of a container's last words (its termination message: its last log lines) a
# condition carries: the last line, cut to this many characters.
LAST_WORDS = 200
# The scheduler's words for a claim its cache does not hold yet.
_CLAIM_NOT_YET_SEEN = re.compile(r'persistentvolumeclaim "[^"]+" not found')
# The scheduler's words for a pod whose claim's volume lives where the pod cannot go.
_VOLUME_ELSEWHERE = "volume node affinity conflict"
_PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


def pod_trouble(pod: dict[str, Any]) -> Trouble | None:
    """What keeps a pod from running, if anything the user must act on; None for a pod
    that is running, starting normally, or gone."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            said = condition.get("message") or "no node fits it"
            if _CLAIM_NOT_YET_SEEN.search(said):
                # The StatefulSet made the claim just before the pod; the scheduler's cache has
                # not seen it yet and tries again by itself. Nothing for the user to do.
                return None
            if _VOLUME_ELSEWHERE in said:
                said += (
                    f" {_VOLUME_ELSEWHERE.capitalize()}: a claim of the pod's is bound to a "
                    "volume that only a node unable to take the pod can reach (a claim kept "
                    "from an earlier ChatBot of this name, by retainDataOnDelete, on a node now "
                    "full, cordoned or gone); free that node, or back the data up and delete "
                    "the claim (docs/operator.md, Deleting a ChatBot)"
                )
            return Trouble("Unschedulable", f"pod {name} cannot be scheduled: {said}")
    containers = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        if reason in _PULL_FAILURES:
            said = waiting.get("message") or reason
            return Trouble(
                "ImagePullFailed",
                f"pod {name} cannot pull {container.get('image')}: {_last_line(said)}",
            )
        if reason == "CrashLoopBackOff":
            ended = (container.get("lastState") or {}).get("terminated") or {}
            words = _last_line(ended.get("message") or "")
            return Trouble(
                "CrashLoopBackOff",
                f"container {container['name']} of pod {name} keeps exiting "
                f"(exit code {ended.get('exitCode', '?')}, {ended.get('reason') or 'Error'})"
                + (f": {words}" if words else ""),
            )
        if reason in ("CreateContainerConfigError", "CreateContainerError"):
            return Trouble(
                reason,
                f"container {container['name']} of pod {name} cannot start: "
                f"{_last_line(waiting.get('message') or reason)}",
            )
    return None


def claim_trouble(name: str, storage_class: str | None) -> Trouble:
    """A claim a pod waits for that is not bound."""
    where = f"storage class {storage_class!r}" if storage_class else "the default storage class"
    return Trouble(
        "ClaimNotBound",
        f"PersistentVolumeClaim {name} ({where}) is not bound, so its pod cannot be scheduled; "
        f"`kubectl describe pvc {name}` says why",
    )


def _last_line(text: str) -> str:
    """A container's last words as a condition carries them: the last line, cut, and without
    anything shaped like a token (a crashing bot's last line may quote its URL)."""
    lines = [line.strip() for line in redact(text).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= LAST_WORDS else f"{last[:LAST_WORDS]}…"


@dataclass(frozen=True)
class IngestRun:
    """The newest ingest Job: its name, and whether and why it failed."""

    job: str
    failed: bool = False
    reason: str = ""


@dataclass(frozen=True)
class Refusal:
    """A child that was not applied: its kind, name, component, and why. `reason` is
    ApplyFailed when the API server refused it, Conflict when another owner holds its name
    (the operator never takes over an object it did not create)."""

    kind: str
    name: str
    component: str
    message: str
    reason: str = "ApplyFailed"

    def describe(self) -> str:
        if self.reason == CONFLICT:
            return f"{self.kind} {self.name} was not applied: {self.message}"
        return f"{self.kind} {self.name} was refused: {self.message}"


CONFLICT = "Conflict"


# The condition a child's refusal shows on, by its component; others show on Ready.
_CONDITION_OF = {
    "model": "ModelReady",
    "gateway": "GatewayReady",
    "memory": "MemoryReady",
    "knowledge-base": "KnowledgeBaseReady",
    "embeddings": "KnowledgeBaseReady",
    "ingest": "KnowledgeBaseReady",
    "knowledge-backup": "KnowledgeBaseReady",
    "slack": "PlatformsReady",
    "discord": "PlatformsReady",
    "telegram": "PlatformsReady",
}


@dataclass(frozen=True)
class MissingSecret:
    platform: str
    secret: str
    key: str

    def describe(self) -> str:
        return (
            f"{self.platform}: Secret {self.secret!r} has no key {self.key!r} (or does not exist)"
        )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    previous: ChatBotStatus, kind: str, ok: bool, reason: str, message: str, generation: int
) -> Condition:
    status = "True" if ok else "False"
    before = next((c for c in previous.conditions if c.type == kind), None)
    moved = before is None or before.status != status
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=_now() if moved or before is None else before.last_transition_time,
        observed_generation=generation,
    )


def _workload(
    workloads: dict[str, Workload],
    component: str,
    what: str,
    troubles: dict[str, list[Trouble]] | None = None,
) -> tuple[bool, str, str]:
    found = workloads.get(component)
    if found is None:
        return False, "Creating", f"the {what} is being created"
    counted = f"{found.ready}/{found.replicas} {what} replicas Ready"
    if found.is_ready:
        return True, "Ready", counted
    known = (troubles or {}).get(component) or []
    if known:
        return False, known[0].reason, f"{counted}: {'; '.join(t.message for t in known)}"
    return False, "NotReady", counted


def _store(missing: list[MissingSecret], waiting: str, where: str) -> tuple[bool, str, str]:
    """The condition of a store whose Secrets are `missing` (`waiting`: what starts once they
    exist), or that the operator does not run, at `where` (whether it answers, the gateway's
    /readyz says)."""
    if missing:
        named = "; ".join(item.describe() for item in missing)
        return False, "SecretNotFound", f"{named}; {waiting} once it exists"
    return True, "External", f"{where}: the gateway's /readyz says whether it answers"


def _waking_takes(spec: ChatBotSpec) -> str:
    """What a model's cold start is made of, for its condition while it wakes."""
    if spec.model.gpu_count:
        return "on GPUs, minutes: a node, the image, the weights, the engine's warm-up"
    return "the image, then the weights, fetched once into the cache"


def _without_redis(spec: ChatBotSpec) -> str:
    """What the gateway does while Redis is away, as the spec says."""
    if spec.gateway.rate_limit.when_unavailable == "refuse":
        return "meanwhile the gateway refuses requests (rateLimit.whenUnavailable: refuse)"
    if spec.gateway.memory.when_unavailable == "refuse":
        return (
            "meanwhile the gateway refuses chats (memory.whenUnavailable: refuse) and serves "
            "its OpenAI-compatible API without rate limits"
        )
    return "meanwhile the gateway answers without memory and without rate limits"


def compute_status(
    bot: ChatBot,
    workloads: dict[str, Workload],
    missing: list[MissingSecret],
    previous: ChatBotStatus,
    ingest: IngestRun | None = None,
    refused: list[Refusal] | None = None,
    missing_sources: list[str] | None = None,
    troubles: dict[str, list[Trouble]] | None = None,
) -> ChatBotStatus:
    """Conditions, phase and replica counts; transition times move only when a status flips.
    `troubles` say, by component, why pods are not Ready."""
    spec = bot.spec
    results: dict[str, tuple[bool, str, str]] = {}
    if spec.model.engine == "endpoint":
        results["ModelReady"] = (True, "External", f"the gateway calls {spec.model.endpoint}")
    elif spec.model.replicas == 0 and spec.model.autoscaling is not None:
        # Idle, by design: the gateway holds the next request and wakes the model.
        results["ModelReady"] = (
            True,
            "ScaledToZero",
            "no replicas while idle: the next request wakes the model (autoscaling)",
        )
    elif spec.model.replicas == 0:
        results["ModelReady"] = (False, "ScaledToZero", "the model server has 0 replicas")
    else:
        results["ModelReady"] = _workload(workloads, "model", "model server", troubles)
        model = workloads.get("model")
        if (
            spec.model.autoscaling is not None
            and model is not None
            and model.ready == 0
            and results["ModelReady"][1] == "NotReady"
        ):
            # Woken from zero (or just created): working as designed, and the gateway holds
            # the requests meanwhile; a pod that cannot start says why instead.
            results["ModelReady"] = (
                True,
                "Waking",
                f"0/{model.replicas} model server replicas Ready: the first is starting "
                f"({_waking_takes(spec)}); requests wait for it up to "
                f"{spec.model.queue_timeout_seconds()} s (autoscaling.queueTimeoutSeconds)",
            )
    results["GatewayReady"] = _workload(workloads, "gateway", "gateway", troubles)
    external = spec.gateway.memory.external
    memory_missing = [item for item in missing if item.platform == "memory"]
    knowledge_missing = [item for item in missing if item.platform == "knowledge-base"]
    missing = [item for item in missing if item.platform not in ("memory", "knowledge-base")]
    if memory_missing or external is not None:
        host = external.url.removeprefix("rediss://").split("/")[0] if external else ""
        results["MemoryReady"] = _store(
            memory_missing,
            "the gateway reaches the external Redis",
            f"Redis at {host}, outside the cluster, over TLS",
        )
    else:
        results["MemoryReady"] = _workload(workloads, "memory", "Redis", troubles)
    if not results["MemoryReady"][0] and not memory_missing:
        ready, reason, message = results["MemoryReady"]
        results["MemoryReady"] = (ready, reason, f"{message}; {_without_redis(spec)}")
    weaviate = spec.knowledge_base.external
    if spec.knowledge_base.enabled:
        if knowledge_missing or weaviate is not None:
            results["KnowledgeBaseReady"] = _store(
                knowledge_missing,
                "the gateway reaches the external Weaviate" if weaviate else "Weaviate starts",
                f"Weaviate at {weaviate.url if weaviate else ''}, outside the cluster",
            )
        else:
            results["KnowledgeBaseReady"] = _workload(
                workloads, "knowledge-base", "Weaviate", troubles
            )
        if results["KnowledgeBaseReady"][0] and runs_embeddings_server(bot):
            embeddings = _workload(workloads, "embeddings", "embeddings server", troubles)
            # An external Weaviate's condition says where it is, unless the embeddings fail.
            if weaviate is None or not embeddings[0]:
                results["KnowledgeBaseReady"] = embeddings
        if missing_sources:
            results["KnowledgeBaseReady"] = (
                False,
                "SourceNotFound",
                f"ConfigMap {', '.join(missing_sources)} of the knowledge base's sources does "
                "not exist; the documents are ingested once it does",
            )
        elif ingest is not None and ingest.failed:
            results["KnowledgeBaseReady"] = (
                False,
                "IngestFailed",
                f"ingest Job {ingest.job} failed: {ingest.reason}; a changed source runs a new "
                f"one (kubectl logs job/{ingest.job})",
            )
    else:
        results["KnowledgeBaseReady"] = (True, "Disabled", "no knowledge base is configured")
    platforms = list(spec.platforms.configured())
    if missing:
        results["PlatformsReady"] = (
            False,
            "SecretNotFound",
            "; ".join(item.describe() for item in missing) + "; the bot starts once it exists",
        )
    elif not platforms:
        results["PlatformsReady"] = (True, "NoPlatforms", "no chat platform is configured")
    else:
        waiting = [
            name for name in platforms if not (workloads.get(name) and workloads[name].is_ready)
        ]
        known = [t for name in waiting for t in (troubles or {}).get(name) or []]
        if known:
            results["PlatformsReady"] = (
                False,
                known[0].reason,
                f"waiting for: {', '.join(waiting)}: {'; '.join(t.message for t in known)}",
            )
        elif waiting:
            results["PlatformsReady"] = (False, "NotReady", f"waiting for: {', '.join(waiting)}")
        else:
            results["PlatformsReady"] = (True, "Ready", f"serving {', '.join(platforms)}")
    unplaced = []
    conflicted = any(refusal.reason == CONFLICT for refusal in refused or [])
    for kind, found in _by_condition(refused or []).items():
        message = "; ".join(refusal.describe() for refusal in found)
        if kind in results:
            results[kind] = (False, found[0].reason, message)
        else:
            unplaced.append(message)
    all_ready = all(ok for ok, _, _ in results.values()) and not unplaced
    unready = [kind for kind, (ok, _, _) in results.items() if not ok]
    # Ready's reason is the first unready component's, so `kubectl get` shows it; a conflict
    # first of all, as only the user can settle it.
    first = results[unready[0]][1] if unready else "Waiting"
    if conflicted:
        first = CONFLICT
    results["Ready"] = (
        all_ready,
        "Ready" if all_ready else ("ApplyFailed" if unplaced and not conflicted else first),
        "every component is Ready"
        if all_ready
        else "; ".join([*unplaced, *([f"not Ready yet: {', '.join(unready)}"] if unready else [])]),
    )
    conditions = [
        _condition(previous, kind, *results[kind], bot.generation) for kind in CONDITION_TYPES
    ]
    degraded = bool(
        missing or memory_missing or knowledge_missing or refused or missing_sources
    ) or (ingest is not None and ingest.failed)
    phase: Phase = "Ready" if all_ready else ("Degraded" if degraded else "Progressing")
    model = workloads.get("model")
    return ChatBotStatus(
        phase=phase,
        observed_generation=bot.generation,
        conditions=conditions,
        model=ModelStatus(
            name=served_model_name(spec.model),
            replicas=model.replicas if model else 0,
            ready_replicas=model.ready if model else 0,
            selector=model_selector(bot),
        ),
        endpoints=EndpointsStatus(gateway=gateway_url(bot)),
        platforms=",".join(platforms),
    )


def _by_condition(refused: list[Refusal]) -> dict[str, list[Refusal]]:
    found: dict[str, list[Refusal]] = {}
    for refusal in refused:
        found.setdefault(_CONDITION_OF.get(refusal.component, "Ready"), []).append(refusal)
    return found


def failed_status(
    generation: int, previous: ChatBotStatus, reason: str, message: str
) -> ChatBotStatus:
    """A spec the operator cannot act on: Failed, with the reason, until the spec changes."""
    ready = _condition(previous, "Ready", False, reason, message, generation)
    kept = [c for c in previous.conditions if c.type != "Ready"]
    return previous.model_copy(
        update={"phase": "Failed", "observed_generation": generation, "conditions": [*kept, ready]}
    )
