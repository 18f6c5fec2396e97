"""kopf handlers, kept thin: parse the ChatBot, render, plan, apply, write status.

Level-based: one `reconcile` runs on resume, create and update, and again on every event of
an owned workload, Service or ConfigMap, so a child deleted or edited by hand is put back.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import kopf
from pydantic import ValidationError

from tertulia.operator.api import GROUP, PLURAL, VERSION, ChatBot, ChatBotStatus
from tertulia.operator.kube import Cluster
from tertulia.operator.plan import ObjectRef, plan
from tertulia.operator.render import Installation, render_all
from tertulia.operator.render.common import MANAGED_BY
from tertulia.operator.render.gateway import api_keys_secret, generated_api_keys
from tertulia.operator.render.knowledge import (
    generated_knowledge_base_key,
    knowledge_base_secret,
)
from tertulia.operator.render.platforms import secret_refs
from tertulia.operator.status import (
    IngestRun,
    MissingSecret,
    Workload,
    compute_status,
    failed_status,
)

MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
IMAGE = os.environ.get("TERTULIA_IMAGE", f"ghcr.io/tertulia/tertulia:{version('tertulia')}")
# Set by the chart: the registry third-party images are mirrored in, and who scrapes metrics.
INSTALLATION = Installation(
    registry=os.environ.get("TERTULIA_IMAGE_REGISTRY", ""),
    scrapers=json.loads(os.environ.get("TERTULIA_METRICS_SCRAPERS") or "null"),
)
# How often a ChatBot waiting for a Secret looks again.
SECRET_RETRY_SECONDS = 10.0

_cluster: Cluster | None = None


def cluster() -> Cluster:
    global _cluster  # one client for the process, made after kopf has logged in
    if _cluster is None:
        _cluster = Cluster()
    return _cluster


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Handler progress lives in annotations, so status holds only what users read.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    # The last handled spec, for diffs, also in an annotation of our own prefix.
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # No on.delete handler: owner references clean up, and no finalizer can block deletion.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Kubernetes Events for what kopf.info/warn report, not for kopf's own debug chatter.
    settings.posting.level = logging.INFO
    # Re-open watches every 5 minutes so a silently dropped connection cannot go unnoticed.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Several replicas coordinate through kopf's peering objects when the chart enables it:
    # the one with the highest priority works, the others pause until it goes. Equal
    # priorities would freeze them all, so each replica draws its own.
    settings.peering.standalone = os.environ.get("TERTULIA_OPERATOR_PEERING", "") == ""
    if not settings.peering.standalone:
        settings.peering.name = os.environ["TERTULIA_OPERATOR_PEERING"]
        settings.peering.mandatory = True
        settings.peering.priority = random.SystemRandom().randint(1, 2**31 - 1)


@kopf.index(GROUP, VERSION, PLURAL)
def chatbots(
    namespace: str, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (namespace, name): {
            "metadata": dict(body.metadata),
            "spec": dict(body.spec),
            "status": dict(body.status),
        }
    }


def _workload(spec: kopf.Spec, status: kopf.Status) -> Workload:
    return Workload(
        replicas=int(spec.get("replicas", 1)), ready=int(status.get("readyReplicas") or 0)
    )


def _workloads(
    namespace: str, labels: kopf.Labels, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], tuple[str, Workload]]:
    key = (namespace, labels["app.kubernetes.io/instance"])
    return {key: (labels["app.kubernetes.io/component"], _workload(spec, status))}


# Two indexes, `deployments` and `statefulsets`, named by their id: replicas by component.
for _plural in ("deployments", "statefulsets"):
    kopf.index("apps", "v1", _plural, labels=MANAGED, id=_plural)(_workloads)


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def ingest_jobs(
    namespace: str, name: str, labels: kopf.Labels, meta: kopf.Meta, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], tuple[str, str, str]]:
    """Each ChatBot's ingest Jobs: when made, the name, and why it failed ('' unless it did)."""
    failed = next(
        (
            f"{condition.get('reason', 'Failed')}"
            for condition in status.get("conditions") or []
            if condition.get("type") == "Failed" and condition.get("status") == "True"
        ),
        "",
    )
    created = str(meta.get("creationTimestamp") or "")
    return {(namespace, labels["app.kubernetes.io/instance"]): (created, name, failed)}


# What each failed ingest Job's Pod said, read once per Job.
_ingest_failures: dict[tuple[str, str], str] = {}


def ingest_run(bot: ChatBot, jobs: kopf.Index[Any, Any]) -> IngestRun | None:
    """The newest ingest Job of the ChatBot, with what its Pod said when it failed."""
    found = sorted(jobs.get((bot.namespace, bot.name), []))
    if not found:
        return None
    _, name, failed = found[-1]
    if not failed:
        return IngestRun(name)
    key = (bot.namespace, name)
    if key not in _ingest_failures:
        _ingest_failures.clear()  # only the newest failure is ever shown
        _ingest_failures[key] = cluster().job_failure(bot.namespace, name)
    said = _ingest_failures[key]
    return IngestRun(name, failed=True, reason=f"{failed}: {said}" if said else failed)


# Missing Secrets by ChatBot, from its last reconcile; child events reuse them for status.
_missing: dict[tuple[str, str], list[MissingSecret]] = {}


@dataclass(frozen=True)
class Observed:
    """What the indexes hold of the ChatBots' children: their workloads and ingest Jobs."""

    deployments: kopf.Index[Any, Any]
    statefulsets: kopf.Index[Any, Any]
    ingest_jobs: kopf.Index[Any, Any]

    @classmethod
    def of(cls, kwargs: dict[str, Any]) -> Observed:
        """From a handler's keyword arguments, where kopf passes every index by its name."""
        return cls(kwargs["deployments"], kwargs["statefulsets"], kwargs["ingest_jobs"])

    def workloads(self, bot: ChatBot) -> dict[str, Workload]:
        key = (bot.namespace, bot.name)
        return dict(self.deployments.get(key, [])) | dict(self.statefulsets.get(key, []))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(body: kopf.Body, **kwargs: Any) -> None:
    previous = ChatBotStatus.model_validate(dict(body.status))
    try:
        bot = ChatBot.from_body(dict(body))
    except ValidationError as error:
        # What the CRD's schema let through but the operator cannot use: report, do not retry.
        message = "; ".join(
            f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
        )
        generation = int(body.meta.get("generation", 0))
        status = failed_status(generation, previous, "InvalidSpec", message)
        cluster().patch_status(
            str(body.meta.namespace), str(body.meta.name), status.model_dump(by_alias=True)
        )
        kopf.warn(body, reason="InvalidSpec", message=message)
        raise kopf.PermanentError(message) from error

    missing = converge(bot, previous, Observed.of(kwargs), body)
    if missing:
        raise kopf.TemporaryError(
            f"waiting for {len(missing)} Secret key(s); other components are applied",
            delay=SECRET_RETRY_SECONDS,
        )


def converge(
    bot: ChatBot, previous: ChatBotStatus, observed: Observed, body: kopf.Body
) -> list[MissingSecret]:
    """Apply what the spec asks for, delete what it no longer asks for, write the status."""
    kube = cluster()
    if bot.spec.gateway.api_keys_secret_ref is None and kube.create(
        generated_api_keys(
            bot, {"bots": secrets.token_urlsafe(32), "admin": secrets.token_urlsafe(32)}
        )
    ):
        kopf.info(
            body, reason="Created", message=f"generated API keys in Secret {api_keys_secret(bot)}"
        )
    knowledge = bot.spec.knowledge_base
    if knowledge.enabled and kube.create(
        generated_knowledge_base_key(bot, secrets.token_urlsafe(32))
    ):
        kopf.info(
            body,
            reason="Created",
            message=f"generated Weaviate's API key in Secret {knowledge_base_secret(bot)}",
        )
    missing = [
        MissingSecret(platform, ref.name, ref.key)
        for platform, refs in secret_refs(bot).items()
        for ref in refs.values()
        if not kube.secret_has_key(bot.namespace, ref.name, ref.key)
    ]
    # Warned once per missing key, not on every retry while it stays missing.
    for item in set(missing) - set(_missing.get((bot.namespace, bot.name), [])):
        kopf.warn(body, reason="SecretNotFound", message=item.describe())
    ready_platforms = set(secret_refs(bot)) - {item.platform for item in missing}
    desired = render_all(
        bot,
        image=IMAGE,
        installation=INSTALLATION,
        ready_platforms=ready_platforms,
        source_digests=source_digests(bot),
    )
    changes = plan(kube.owned(bot), desired)
    for manifest in changes.apply:
        kube.apply(manifest)
    for ref in changes.delete:
        kube.delete(bot.namespace, ref)
        kopf.info(body, reason="Deleted", message=f"{ref.kind} {ref.name} is no longer in the spec")
    if bot.generation != previous.observed_generation:
        kopf.info(
            body,
            reason="Applied",
            message=f"generation {bot.generation}: applied {len(changes.apply)} objects",
        )
    _missing[bot.namespace, bot.name] = missing
    write_status(bot, previous, observed, body)
    return missing


def source_digests(bot: ChatBot) -> dict[str, str]:
    """The content version of each ConfigMap the knowledge base ingests."""
    knowledge = bot.spec.knowledge_base
    if not knowledge.enabled:
        return {}
    return {
        source.config_map.name: cluster().config_map_digest(bot.namespace, source.config_map.name)
        for source in knowledge.sources
        if source.config_map is not None
    }


def write_status(
    bot: ChatBot, previous: ChatBotStatus, observed: Observed, body: kopf.Body
) -> None:
    missing = _missing.get((bot.namespace, bot.name), [])
    ingest = ingest_run(bot, observed.ingest_jobs) if bot.spec.knowledge_base.enabled else None
    status = compute_status(bot, observed.workloads(bot), missing, previous, ingest)
    if status == previous:
        return
    cluster().patch_status(bot.namespace, bot.name, status.model_dump(by_alias=True))
    if status.phase != previous.phase:
        message = next(c.message for c in status.conditions if c.type == "Ready")
        kopf.info(body, reason=status.phase, message=message)


def _on_child_event(
    event: kopf.RawEvent,
    namespace: str,
    labels: kopf.Labels,
    chatbots: kopf.Index[Any, Any],
    **kwargs: Any,
) -> None:
    """A child changed or went: put it back as rendered, and refresh the parent's status."""
    instance = labels.get("app.kubernetes.io/instance")
    parent = next(iter(chatbots.get((namespace, instance), [])), None) if instance else None
    found = _from_index(parent) if parent is not None else None
    if found is None:
        return
    bot, previous, body = found
    child = event["object"]
    ref = ObjectRef(child["apiVersion"], child["kind"], child["metadata"]["name"])
    # An ingest Job is never put back (a new one is named by its sources): its events only
    # refresh the status.
    if ref.kind != "Job":
        missing = _missing.get((namespace, bot.name), [])
        ready_platforms = set(secret_refs(bot)) - {item.platform for item in missing}
        rendered = render_all(
            bot, image=IMAGE, installation=INSTALLATION, ready_platforms=ready_platforms
        )
        for manifest in rendered:
            if ObjectRef.of(manifest) == ref:
                cluster().apply(manifest)
                break
    write_status(bot, previous, Observed.of(kwargs), body)


def _from_index(parent: dict[str, Any]) -> tuple[ChatBot, ChatBotStatus, kopf.Body] | None:
    """A ChatBot from the index, its last status, and a body kopf can post events to; None
    when its spec is invalid (reconcile reports that)."""
    try:
        bot = ChatBot.from_body(parent)
    except ValidationError:
        return None
    previous = ChatBotStatus.model_validate(parent.get("status") or {})
    body = kopf.Body({"apiVersion": f"{GROUP}/{VERSION}", "kind": "ChatBot", **parent})
    return bot, previous, body


for _group, _version, _plural in (
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("batch", "v1", "jobs"),
):
    kopf.on.event(_group, _version, _plural, labels=MANAGED)(_on_child_event)


@kopf.on.event("", "v1", "configmaps", labels={"app.kubernetes.io/managed-by": kopf.ABSENT})
def _on_source_event(
    event: kopf.RawEvent,
    namespace: str,
    name: str,
    chatbots: kopf.Index[Any, Any],
    **kwargs: Any,
) -> None:
    """A ConfigMap of documents changed: its ChatBots run a new ingest Job over it."""
    if event.get("type") not in ("MODIFIED", "ADDED"):
        return  # the initial listing (resume reconciles) or a deletion (the Job keeps its run)
    for (bot_namespace, _name), parents in chatbots.items():
        if bot_namespace != namespace:
            continue
        for parent in parents:
            sources = ((parent.get("spec") or {}).get("knowledgeBase") or {}).get("sources") or []
            if not any((source.get("configMap") or {}).get("name") == name for source in sources):
                continue
            found = _from_index(parent)
            if found is not None:
                converge(found[0], found[1], Observed.of(kwargs), found[2])
