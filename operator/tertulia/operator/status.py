"""The ChatBot's status from what its children report: conditions, phase, model replicas."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from tertulia.operator.api import (
    CONDITION_TYPES,
    ChatBot,
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
class IngestRun:
    """The newest ingest Job: its name, and whether and why it failed."""

    job: str
    failed: bool = False
    reason: str = ""


@dataclass(frozen=True)
class Refusal:
    """A child the API server refused to apply: its kind, name, component, and why."""

    kind: str
    name: str
    component: str
    message: str

    def describe(self) -> str:
        return f"{self.kind} {self.name} was refused: {self.message}"


# The condition a child's refusal shows on, by its component; others show on Ready.
_CONDITION_OF = {
    "model": "ModelReady",
    "gateway": "GatewayReady",
    "memory": "MemoryReady",
    "knowledge-base": "KnowledgeBaseReady",
    "embeddings": "KnowledgeBaseReady",
    "ingest": "KnowledgeBaseReady",
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


def _workload(workloads: dict[str, Workload], component: str, what: str) -> tuple[bool, str, str]:
    found = workloads.get(component)
    if found is None:
        return False, "Creating", f"the {what} is being created"
    if found.is_ready:
        return True, "Ready", f"{found.ready}/{found.replicas} {what} replicas Ready"
    return False, "NotReady", f"{found.ready}/{found.replicas} {what} replicas Ready"


def compute_status(
    bot: ChatBot,
    workloads: dict[str, Workload],
    missing: list[MissingSecret],
    previous: ChatBotStatus,
    ingest: IngestRun | None = None,
    refused: list[Refusal] | None = None,
    missing_sources: list[str] | None = None,
) -> ChatBotStatus:
    """Conditions, phase and replica counts; transition times move only when a status flips."""
    spec = bot.spec
    results: dict[str, tuple[bool, str, str]] = {}
    if spec.model.engine == "endpoint":
        results["ModelReady"] = (True, "External", f"the gateway calls {spec.model.endpoint}")
    elif spec.model.replicas == 0:
        results["ModelReady"] = (False, "ScaledToZero", "the model server has 0 replicas")
    else:
        results["ModelReady"] = _workload(workloads, "model", "model server")
    results["GatewayReady"] = _workload(workloads, "gateway", "gateway")
    results["MemoryReady"] = _workload(workloads, "memory", "Redis")
    if spec.knowledge_base.enabled:
        results["KnowledgeBaseReady"] = _workload(workloads, "knowledge-base", "Weaviate")
        if results["KnowledgeBaseReady"][0] and runs_embeddings_server(bot):
            results["KnowledgeBaseReady"] = _workload(workloads, "embeddings", "embeddings server")
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
        if waiting:
            results["PlatformsReady"] = (False, "NotReady", f"waiting for: {', '.join(waiting)}")
        else:
            results["PlatformsReady"] = (True, "Ready", f"serving {', '.join(platforms)}")
    unplaced = []
    for kind, found in _by_condition(refused or []).items():
        message = "; ".join(refusal.describe() for refusal in found)
        if kind in results:
            results[kind] = (False, "ApplyFailed", message)
        else:
            unplaced.append(message)
    all_ready = all(ok for ok, _, _ in results.values()) and not unplaced
    unready = [kind for kind, (ok, _, _) in results.items() if not ok]
    results["Ready"] = (
        all_ready,
        "Ready" if all_ready else ("ApplyFailed" if unplaced else "Waiting"),
        "every component is Ready"
        if all_ready
        else "; ".join([*unplaced, *([f"not Ready yet: {', '.join(unready)}"] if unready else [])]),
    )
    conditions = [
        _condition(previous, kind, *results[kind], bot.generation) for kind in CONDITION_TYPES
    ]
    degraded = bool(missing or refused or missing_sources) or (ingest is not None and ingest.failed)
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
