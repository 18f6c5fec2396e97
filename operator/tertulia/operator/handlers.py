"""kopf handlers, kept thin: each finds its ChatBot, takes its lock and converges it
(`converge.py` holds the steps).

Level-based: `reconcile` runs on resume, create and update; every owned child's event puts
that child back as rendered and refreshes the status; a change to a Secret or a source
ConfigMap the ChatBot names converges it again; and a loop resyncs each ChatBot every few
minutes, as a safety net for a missed event. What the watches report is kept in `seen.py`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from typing import Any

import kopf
from pydantic import ValidationError

from tertulia.operator.api import GROUP, PLURAL, VERSION, ChatBot, ChatBotStatus
from tertulia.operator.converge import (
    ChatBotGone,
    body_of,
    cluster,
    converge,
    forget,
    known,
    named_objects,
    put_back,
    release_unnamed,
    write_status,
)
from tertulia.operator.plan import ObjectRef
from tertulia.operator.render.common import MANAGED_BY, WATCH_LABEL
from tertulia.operator.seen import COLLECTIONS, Seen
from tertulia.operator.status import failed_status

MANAGED_LABEL = "app.kubernetes.io/managed-by"
MANAGED = {MANAGED_LABEL: MANAGED_BY}
# The kinds the operator owns, by API group, but Secrets and ConfigMaps (watched by label).
_OWNED = (
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("", "services"),
    ("", "serviceaccounts"),
    ("", "persistentvolumeclaims"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("networking.k8s.io", "ingresses"),
    ("networking.k8s.io", "networkpolicies"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("policy", "poddisruptionbudgets"),
)
# How often a ChatBot waiting for a Secret looks again.
SECRET_RETRY_SECONDS = 10.0
# How often a ChatBot with a child the API server refused tries again.
REFUSED_RETRY_SECONDS = float(os.environ.get("TERTULIA_OPERATOR_REFUSED_RETRY_SECONDS", "60"))
# The safety net: every ChatBot is converged again this often.
RESYNC_SECONDS = float(os.environ.get("TERTULIA_OPERATOR_RESYNC_SECONDS", "300"))
# How many objects' events kopf handles at once.
WORKER_LIMIT = 64
# Every ChatBot and the children its status reads, as the watches last reported them.
SEEN = Seen()
_log = logging.getLogger(__name__)


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
    # Server-side selectors: the API server sends only the operator's own children, and the
    # Secrets and ConfigMaps labelled for it (its own, and those a ChatBot names), never the
    # rest of a large cluster's objects.
    for group, plural in (*_OWNED, ("", "pods")):
        settings.watching.label_selectors[group, plural] = f"{MANAGED_LABEL}={MANAGED_BY}"
    for plural in ("secrets", "configmaps"):
        settings.watching.label_selectors["", plural] = WATCH_LABEL
    # kopf runs a worker, and queues raw events, per object that has events: a burst of new
    # ChatBots brings thousands of children at once. A bound on the workers keeps the memory
    # and the contention of a burst in check (the events of the others wait in their
    # queues), and idle workers go after a second, not five. (Safe because the operator
    # keeps its own cache, `seen.py`: kopf's indexes would hold every worker until they are
    # filled, which takes workers of their own, and a restart deadlocked.)
    settings.batching.worker_limit = WORKER_LIMIT
    settings.batching.idle_timeout = 1.0
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


@kopf.on.startup()
def fill_cache(**_: Any) -> None:
    """Every ChatBot and the children its status reads, listed before any handler runs."""
    kube = cluster()
    for kind, path, selector in COLLECTIONS:
        SEEN.fill(kind, kube.list_all(path, selector))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(body: kopf.Body, **_: Any) -> None:
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

    with known(bot.namespace, bot.name).lock:
        if SEEN.gone(bot.uid):
            return  # an event queued before the ChatBot's deletion: nothing to converge
        try:
            state = converge(bot, previous, SEEN.observed(bot), body)
        except ChatBotGone:
            _deleted(bot.namespace, bot.name, bot.uid)
            return
    if state.missing or state.missing_sources:
        raise kopf.TemporaryError(
            f"waiting for {len(state.missing)} Secret key(s) and "
            f"{len(state.missing_sources)} ConfigMap(s); other components are applied",
            delay=SECRET_RETRY_SECONDS,
        )
    if state.refused:
        raise kopf.TemporaryError(
            f"{len(state.refused)} object(s) refused; the others are applied",
            delay=REFUSED_RETRY_SECONDS,
        )


@kopf.on.event(GROUP, VERSION, PLURAL)
def _on_chatbot_event(event: kopf.RawEvent, namespace: str, name: str, **_: Any) -> None:
    """A ChatBot's event, under its lock: a converge that waited for the lock reads the
    ChatBot as this event left it (and skips one deleted), so nothing it labels or applies
    for an older spec outlives the release below."""
    body = event["object"]
    with known(namespace, name).lock:
        if event.get("type") == "DELETED":
            _deleted(namespace, name, str(body["metadata"].get("uid")))
        elif SEEN.saw(body) and event.get("type") == "MODIFIED":
            release_labels(namespace)
            _refresh_status(namespace, name)


def _deleted(namespace: str, name: str, uid: str) -> None:
    """A ChatBot deleted, known from its DELETED event or from a 404 first (its events
    queued before the deletion are still to come, each of which would bring it back, and
    converge it, were it not remembered as gone): forgotten, and the labels it alone put on
    the users' objects taken off. The caller holds the ChatBot's lock."""
    SEEN.saw(
        {"kind": "ChatBot", "metadata": {"namespace": namespace, "name": name, "uid": uid}},
        deleted=True,
    )
    release_labels(namespace)
    forget(namespace, name)


def _refresh_status(namespace: str, name: str) -> None:
    """The status written again when it is not what the children say. A child's event
    compares its status with the ChatBot as last seen, which may lag the one on the server
    (its event still queued): the status read here, from this very event, is current. Only
    for the generation this process converged; a newer spec's own converge writes its status.
    The caller holds the ChatBot's lock."""
    parsed = _seen_parent(namespace, name)
    if parsed is None:
        return
    bot, previous, body = parsed
    state = known(namespace, name)
    if state.inputs is None or state.converged != bot.generation:
        return
    _write_status(bot, previous, body)


def _write_status(bot: ChatBot, previous: ChatBotStatus, body: kopf.Body) -> None:
    """write_status from the children as seen; a ChatBot found gone is handled as deleted.
    The caller holds the ChatBot's lock."""
    try:
        write_status(bot, previous, SEEN.observed(bot), body)
    except ChatBotGone:
        _deleted(bot.namespace, bot.name, bot.uid)


def release_labels(namespace: str) -> None:
    """The watch label off the users' Secrets and ConfigMaps of `namespace` that no ChatBot
    names any more (one deleted, a spec that dropped a reference, or one labelled by a
    converge that ran as its ChatBot went)."""
    bots = [parsed[0] for parent in SEEN.chatbots(namespace) if (parsed := _parse(parent))]
    if len(bots) < len(SEEN.chatbots(namespace)):
        return  # a ChatBot whose spec cannot be read may name any of them: keep them all
    for collection, name in release_unnamed(cluster(), SEEN.labelled(namespace), bots, namespace):
        _log.info("released %s %s/%s: no ChatBot names it", collection, namespace, name)


@kopf.on.startup()
async def start_resync(**_: Any) -> None:
    """Every ChatBot converged again every RESYNC_SECONDS: what no event reported (a watch
    that missed one) is repaired too. A loop of the operator's own rather than a kopf timer,
    which would put a finalizer on every ChatBot: one that nothing removes once the operator
    is uninstalled, and the ChatBot could never be deleted."""
    _resync_task.add(asyncio.get_running_loop().create_task(_resync_forever()))


_resync_task: set[asyncio.Task[None]] = set()


async def _resync_forever() -> None:
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        await resync_once()


async def resync_once() -> None:
    """Converge every ChatBot seen. One that fails (its namespace being deleted, the API
    server refusing or away) is logged and tried again at the next round: it must not end the
    loop, or no later change that a watch missed would ever be carried out."""
    for parent in SEEN.chatbots():
        namespace, name = parent["metadata"]["namespace"], parent["metadata"]["name"]
        try:
            await asyncio.to_thread(_converge_locked, namespace, name)
        except Exception as error:  # any failure: the next round tries again
            # The type and status only: an API error's body may quote the objects sent.
            _log.warning(
                "resync of ChatBot %s/%s failed (%s %s); next try in %g s",
                namespace,
                name,
                type(error).__name__,
                getattr(error, "status", ""),
                RESYNC_SECONDS,
            )


def _parse(parent: dict[str, Any]) -> tuple[ChatBot, ChatBotStatus, kopf.Body] | None:
    """A ChatBot, its last status, and a body kopf can post Events to; None when its spec is
    invalid (reconcile reports that)."""
    try:
        bot = ChatBot.from_body(parent)
    except ValidationError:
        return None
    previous = ChatBotStatus.model_validate(parent.get("status") or {})
    return bot, previous, body_of(parent)


def _seen_parent(namespace: str, instance: str) -> tuple[ChatBot, ChatBotStatus, kopf.Body] | None:
    """The ChatBot a child belongs to, as last seen; None when unseen or its spec invalid."""
    parent = SEEN.chatbot(namespace, instance)
    return _parse(parent) if parent is not None else None


def _converge_locked(namespace: str, name: str) -> None:
    """Converge a ChatBot as last seen, read under its lock: one deleted, or whose spec
    changed, while this waited is not converged from an older copy (which would label what
    its event just released, or apply what its spec no longer asks for)."""
    with known(namespace, name).lock:
        parsed = _seen_parent(namespace, name)
        if parsed is not None:
            bot, previous, body = parsed
            try:
                converge(bot, previous, SEEN.observed(bot), body)
            except ChatBotGone:
                _deleted(namespace, name, bot.uid)


def _on_child_event(event: kopf.RawEvent, namespace: str, labels: kopf.Labels, **_: Any) -> None:
    """A child changed or went: put it back as rendered, and refresh the parent's status."""
    SEEN.saw(event["object"], deleted=event.get("type") == "DELETED")
    instance = labels.get("app.kubernetes.io/instance")
    if not instance:
        return
    with known(namespace, instance).lock:
        # Read under the lock: a reconcile that just finished has been seen.
        parsed = _seen_parent(namespace, instance)
        if parsed is None:
            return
        bot, previous, body = parsed
        child = event["object"]
        ref = ObjectRef(child["apiVersion"], child["kind"], child["metadata"]["name"])
        # An ingest Job is never put back (a new one is named by its sources), and a child
        # just created is as rendered: their events only refresh the status.
        if ref.kind != "Job" and event.get("type") in ("MODIFIED", "DELETED"):
            put_back(bot, ref)
        _write_status(bot, previous, body)


# Every kind the operator owns, so any child deleted or edited by hand is put back.
for _group, _version, _plural in (
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("", "v1", "serviceaccounts"),
    ("", "v1", "persistentvolumeclaims"),
    ("batch", "v1", "jobs"),
    ("batch", "v1", "cronjobs"),
    ("networking.k8s.io", "v1", "ingresses"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
):
    kopf.on.event(_group, _version, _plural, labels=MANAGED)(_on_child_event)


@kopf.on.event("", "v1", "pods", labels=MANAGED)
def _on_pod_event(event: kopf.RawEvent, namespace: str, labels: kopf.Labels, **_: Any) -> None:
    """A pod of a ChatBot's changed: when what keeps it from running changed (it cannot be
    scheduled or pull its image, it crash-loops, or it no longer does), the status says so,
    and a new trouble is a Warning Event on the ChatBot."""
    pod, deleted = event["object"], event.get("type") == "DELETED"
    if not SEEN.saw(pod, deleted):
        return
    instance = labels.get("app.kubernetes.io/instance")
    if not instance:
        return
    with known(namespace, instance).lock:
        parsed = _seen_parent(namespace, instance)
        if parsed is None:
            return
        bot, previous, body = parsed
        trouble = SEEN.to_announce(pod, deleted)
        if trouble is not None:
            kopf.warn(body, reason=trouble.reason, message=trouble.message)
        _write_status(bot, previous, body)


@kopf.on.event("", "v1", "secrets")
def _on_secret_event(event: kopf.RawEvent, namespace: str, name: str, **_: Any) -> None:
    """A Secret a ChatBot's pods read was created, rotated or deleted: the ChatBot is
    converged, so its status says so within seconds and the pods that read it roll."""
    kind = event.get("type")
    SEEN.saw_labelled("secrets", event["object"], kind == "DELETED")
    if kind not in ("ADDED", "MODIFIED", "DELETED"):
        return  # the initial listing: resume converges every ChatBot anyway
    labels = (event["object"].get("metadata") or {}).get("labels") or {}
    if kind == "ADDED" and labels.get(MANAGED_LABEL) == MANAGED_BY:
        return  # a key Secret the operator has just generated: nothing to converge
    _converge_readers(namespace, "secrets", name, added=kind == "ADDED")


@kopf.on.event("", "v1", "configmaps", labels={"app.kubernetes.io/managed-by": kopf.ABSENT})
def _on_source_event(event: kopf.RawEvent, namespace: str, name: str, **_: Any) -> None:
    """A ConfigMap of documents changed: its ChatBots run a new ingest Job over it."""
    SEEN.saw_labelled("configmaps", event["object"], event.get("type") == "DELETED")
    if event.get("type") not in ("MODIFIED", "ADDED"):
        return  # the initial listing (resume reconciles) or a deletion (the Job keeps its run)
    _converge_readers(namespace, "configmaps", name, added=event.get("type") == "ADDED")


def _converge_readers(namespace: str, collection: str, name: str, *, added: bool) -> None:
    """Converge the ChatBots of `namespace` that read a user's Secret or ConfigMap; one whose
    label has just appeared and that none reads was labelled by a converge that ran as its
    ChatBot went, and the label comes off."""
    readers = [
        parsed[0]
        for parent in SEEN.chatbots(namespace)
        if (parsed := _parse(parent)) and (collection, name) in named_objects(parsed[0])
    ]
    for bot in readers:
        _converge_locked(bot.namespace, bot.name)
    if added and not readers:
        release_labels(namespace)
