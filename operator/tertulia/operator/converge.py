"""Converging one ChatBot, the steps every trigger takes (its own change, a child's, a Secret's
or a source ConfigMap's, the periodic resync), one ChatBot at a time.

Each step is small: make the generated keys, check the Secrets the spec names, render, apply
each child on its own (a refused one is reported, the rest still applied), delete what the
spec dropped, write the status. What a converge learnt is kept in `Known`, so the events
between two converges render exactly what the last one did.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from tertulia.operator.api import GROUP, VERSION, ChatBot, ChatBotStatus
from tertulia.operator.kube import MISSING, Cluster
from tertulia.operator.plan import Manifest, ObjectRef, plan
from tertulia.operator.render import Installation, render_all
from tertulia.operator.render.gateway import (
    GENERATED_KEYS,
    api_keys_secret,
    generated_api_keys,
)
from tertulia.operator.render.knowledge import COMPONENT as KNOWLEDGE
from tertulia.operator.render.knowledge import (
    backup_secrets,
    generated_knowledge_base_key,
    knowledge_base_key,
)
from tertulia.operator.render.memory import COMPONENT as MEMORY
from tertulia.operator.render.memory import (
    generated_memory_password,
    memory_secrets,
)
from tertulia.operator.render.model import (
    SERVER_KEYS,
    generated_server_keys,
    needs_server_keys,
    server_keys_secret,
)
from tertulia.operator.render.platforms import secret_refs
from tertulia.operator.seen import IngestJob, Observed
from tertulia.operator.status import (
    CONFLICT,
    IngestRun,
    MissingSecret,
    Refusal,
    compute_status,
)

IMAGE = os.environ.get("TERTULIA_IMAGE", f"ghcr.io/tertulia/tertulia:{version('tertulia')}")
# Set by the chart: the registry third-party images are mirrored in, and who scrapes metrics.
INSTALLATION = Installation(
    registry=os.environ.get("TERTULIA_IMAGE_REGISTRY", ""),
    scrapers=json.loads(os.environ.get("TERTULIA_METRICS_SCRAPERS") or "null"),
    gateway_clients=json.loads(os.environ.get("TERTULIA_GATEWAY_CLIENTS") or "[]"),
    egress=os.environ.get("TERTULIA_EGRESS") or "open",
    digests=os.environ.get("TERTULIA_IMAGE_DIGESTS", "true") != "false",
)

_cluster: Cluster | None = None


def cluster() -> Cluster:
    global _cluster  # one client for the process, made after kopf has logged in
    if _cluster is None:
        _cluster = Cluster()
    return _cluster


@dataclass(frozen=True)
class Inputs:
    """What a render depends on besides the spec, as the last converge found it."""

    ready_platforms: frozenset[str] = frozenset()
    source_digests: dict[str, str] = field(default_factory=dict)
    secret_versions: dict[str, str] = field(default_factory=dict)


@dataclass
class Known:
    """What the operator learnt of one ChatBot, kept between events; `lock` lets one worker
    at a time converge it (kopf runs handlers in a thread pool)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    inputs: Inputs | None = None
    missing: list[MissingSecret] = field(default_factory=list)
    missing_sources: list[str] = field(default_factory=list)  # ConfigMaps not there yet
    refused: list[Refusal] = field(default_factory=list)
    failed_ingest: tuple[str, str] | None = None  # a failed Job's name, and what it said
    # Children seen to carry this ChatBot's owner reference (or made by it): applied without
    # looking first. Any other is looked up once, and left alone if another holds its name.
    owned: set[ObjectRef] = field(default_factory=set)
    # The spec generation this process last converged: a status is recomputed outside a
    # converge only for it (a newer spec's status is its own converge's to write).
    converged: int = 0


_known: dict[tuple[str, str], Known] = {}
_known_lock = threading.Lock()


class ChatBotGone(Exception):
    """The ChatBot was deleted while it was being worked on (the API server answered 404)."""


def known(namespace: str, name: str) -> Known:
    with _known_lock:
        return _known.setdefault((namespace, name), Known())


def forget(namespace: str, name: str) -> None:
    """A deleted ChatBot: nothing of it is kept."""
    with _known_lock:
        _known.pop((namespace, name), None)


def converge(bot: ChatBot, previous: ChatBotStatus, observed: Observed, body: kopf.Body) -> Known:
    """Apply what the spec asks for, delete what it no longer asks for, write the status.
    The caller holds the ChatBot's lock."""
    state = known(bot.namespace, bot.name)
    kube = cluster()
    held = generate_keys(kube, bot, body)
    missing, versions = check_secrets(kube, bot, skip={item.name for item in held})
    announce(body, "SecretNotFound", missing, state.missing)
    state.inputs = Inputs(
        ready_platforms=frozenset(secret_refs(bot)) - {item.platform for item in missing},
        source_digests=source_digests(kube, bot),
        secret_versions=versions,
    )
    desired = render(bot, state.inputs)
    refused = held + apply_each(kube, bot, desired, state, held)
    conflicts = [item for item in refused if item.reason == CONFLICT]
    announce(body, CONFLICT, conflicts, state.refused)
    announce(body, "ApplyFailed", [r for r in refused if r not in conflicts], state.refused)
    prune(kube, bot, desired, body)
    if bot.generation != previous.observed_generation:
        kopf.info(
            body,
            reason="Applied",
            message=f"generation {bot.generation}: applied {len(desired) - len(refused)} of "
            f"{len(desired)} objects",
        )
    state.missing, state.refused = missing, refused
    # An absent ConfigMap is not labelled for the watch: converge looks again until it is.
    state.missing_sources = sorted(
        name for name, digest in state.inputs.source_digests.items() if digest == MISSING
    )
    state.converged = bot.generation
    write_status(bot, previous, observed, body)
    return state


def generate_keys(kube: Cluster, bot: ChatBot, body: kopf.Body) -> list[Refusal]:
    """The API keys of the gateway (one per bot, the web chat's and the admin's), Redis's
    password and Weaviate's key, made once when the spec names none; a key an older Secret
    lacks is added, and none that exists is ever changed. A Secret of one of those names that
    this ChatBot does not own is left untouched and returned as a conflict: the pods that
    would mount it are not applied."""
    held: list[Refusal] = []
    sets: list[tuple[Manifest, tuple[str, ...], str]] = []
    if bot.spec.gateway.api_keys_secret_ref is None:
        keys = {key: secrets.token_urlsafe(32) for key in GENERATED_KEYS}
        sets.append((generated_api_keys(bot, keys), GENERATED_KEYS, "API keys"))
    if needs_server_keys(bot):
        keys = {key: secrets.token_urlsafe(32) for key in SERVER_KEYS}
        sets.append((generated_server_keys(bot, keys), SERVER_KEYS, "the servers' keys"))
    for manifest, wanted, what in sets:
        conflict = _keys_made(kube, bot, body, manifest, wanted, what)
        if conflict is not None:
            held.append(conflict)
    made: list[tuple[Manifest, str]] = []
    if bot.spec.gateway.memory.external is None:
        made.append((generated_memory_password(bot, secrets.token_urlsafe(32)), "Redis's password"))
    knowledge = bot.spec.knowledge_base
    if knowledge.enabled and knowledge.external is None:
        key = generated_knowledge_base_key(bot, secrets.token_urlsafe(32))
        made.append((key, "Weaviate's API key"))
    for manifest, what in made:
        name = manifest["metadata"]["name"]
        if kube.create(manifest):
            kopf.info(body, reason="Created", message=f"generated {what} in Secret {name}")
        elif (conflict := _held_elsewhere(kube, bot, manifest)) is not None:
            held.append(conflict)
    return held


def _keys_made(
    kube: Cluster,
    bot: ChatBot,
    body: kopf.Body,
    manifest: Manifest,
    wanted: tuple[str, ...],
    what: str,
) -> Refusal | None:
    """A Secret of generated keys made, or the keys an older one lacks added to it; a
    conflict when another holds its name."""
    name = manifest["metadata"]["name"]
    if kube.create(manifest):
        kopf.info(body, reason="Created", message=f"generated {what} in Secret {name}")
        return None
    conflict = _held_elsewhere(kube, bot, manifest)
    if conflict is not None:
        return conflict
    found = kube.secret_keys(bot.namespace, name)
    lacking = [key for key in wanted if found is not None and key not in found[1]]
    if lacking:
        kube.add_keys(bot.namespace, name, {key: secrets.token_urlsafe(32) for key in lacking})
        kopf.info(body, reason="Updated", message=f"added {', '.join(lacking)} to Secret {name}")
    return None


def _held_elsewhere(kube: Cluster, bot: ChatBot, manifest: Manifest) -> Refusal | None:
    """A conflict when an object of the manifest's name exists without this ChatBot as its
    owner; None when it is this ChatBot's (or gone)."""
    if kube.held_by(manifest, bot.uid) is not False:
        return None
    return _not_applied(
        manifest,
        f"a {manifest['kind']} of that name exists and is not this ChatBot's; it is left "
        "untouched (rename or delete it, or rename the ChatBot)",
    )


def read_secrets(bot: ChatBot) -> list[tuple[str, str | None]]:
    """Every Secret the ChatBot's pods read at start, with the key a platform needs; the
    operator watches these."""
    found: list[tuple[str, str | None]] = [
        (ref.name, ref.key) for refs in secret_refs(bot).values() for ref in refs.values()
    ]
    found.append((api_keys_secret(bot), None))  # the bots' keys are among the refs above
    found.extend((name, None) for name in memory_secrets(bot))
    if bot.spec.knowledge_base.enabled:
        found.append((knowledge_base_key(bot)[0], None))
    found.extend((ref.name, None) for ref in backup_secrets(bot))
    if bot.spec.model.api_key_secret_ref is not None:
        found.append((bot.spec.model.api_key_secret_ref.name, None))
    if needs_server_keys(bot):
        found.append((server_keys_secret(bot), None))
    return found


def named_objects(bot: ChatBot) -> set[tuple[str, str]]:
    """The Secrets and ConfigMaps of the ChatBot's namespace it reads, as (collection, name):
    those the operator labels for its watch."""
    named = {("secrets", name) for name, _ in read_secrets(bot)}
    if bot.spec.knowledge_base.enabled:
        named |= {
            ("configmaps", source.config_map.name)
            for source in bot.spec.knowledge_base.sources
            if source.config_map is not None
        }
    return named


def release_unnamed(
    kube: Cluster, labelled: set[tuple[str, str]], bots: list[ChatBot], namespace: str
) -> list[tuple[str, str]]:
    """Take the watch label off the labelled Secrets and ConfigMaps that none of `bots` (the
    namespace's ChatBots) names any more; those released."""
    named = set().union(*(named_objects(bot) for bot in bots)) if bots else set()
    released = sorted(labelled - named)
    for collection, name in released:
        kube.unwatch(namespace, collection, name)
    return released


def check_secrets(
    kube: Cluster, bot: ChatBot, skip: set[str] | None = None
) -> tuple[list[MissingSecret], dict[str, str]]:
    """The platforms' keys that are missing (and an external Redis's, as `memory`'s, and an
    external Weaviate's or the backup bucket's, as `knowledge-base`'s), and the versions of
    the Secrets that exist (each read once). Those in `skip`, held by another owner, are not
    read, nor labelled."""
    names = dict.fromkeys(name for name, _ in read_secrets(bot) if name not in (skip or ()))
    found = {name: kube.secret_keys(bot.namespace, name) for name in names}
    versions = {name: state[0] for name, state in found.items() if state is not None}
    needed = [
        (platform, ref) for platform, refs in secret_refs(bot).items() for ref in refs.values()
    ]
    external = bot.spec.gateway.memory.external
    if external is not None:
        refs = (external.password_secret_ref, external.ca_secret_ref)
        needed += [(MEMORY, ref) for ref in refs if ref is not None]
    weaviate = bot.spec.knowledge_base.external
    if bot.spec.knowledge_base.enabled and weaviate is not None:
        needed.append((KNOWLEDGE, weaviate.api_key_secret_ref))
    needed += [(KNOWLEDGE, ref) for ref in backup_secrets(bot)]
    missing = [
        MissingSecret(owner, ref.name, ref.key)
        for owner, ref in needed
        if ref.name in found and ((state := found[ref.name]) is None or ref.key not in state[1])
    ]
    return missing, versions


def source_digests(kube: Cluster, bot: ChatBot) -> dict[str, str]:
    """The content version of each ConfigMap the knowledge base ingests."""
    knowledge = bot.spec.knowledge_base
    if not knowledge.enabled:
        return {}
    return {
        source.config_map.name: kube.config_map_digest(bot.namespace, source.config_map.name)
        for source in knowledge.sources
        if source.config_map is not None
    }


def render(bot: ChatBot, inputs: Inputs) -> list[Manifest]:
    return render_all(
        bot,
        image=IMAGE,
        installation=INSTALLATION,
        ready_platforms=set(inputs.ready_platforms),
        source_digests=inputs.source_digests,
        secret_versions=inputs.secret_versions,
    )


def apply_each(
    kube: Cluster,
    bot: ChatBot,
    manifests: Iterable[Manifest],
    state: Known,
    held: list[Refusal] | None = None,
) -> list[Refusal]:
    """Apply every object on its own: one the API server refuses (an invalid pass-through
    field, an immutable field changed) is reported and the others are still applied. Any
    status counts: an invalid field inside a pass-through object fails server-side apply's
    conversion with a 500, and a passing server error is as well reported and retried. Only
    a lost connection stops the converge.

    Nothing is taken over: a child not known to be this ChatBot's is looked up first, and one
    that another holds (an app's own Deployment of the same name) is left as it is and
    reported as a conflict, as is a workload that would mount a Secret another holds."""
    refused = []
    foreign = {item.name for item in held or [] if item.kind == "Secret"}
    for manifest in manifests:
        ref = ObjectRef.of(manifest)
        mounted = sorted(name for name in foreign if _mounts_secret(manifest, name))
        if mounted:
            refused.append(_not_applied(manifest, f"it would mount Secret {mounted[0]}, "
                                        "which is not this ChatBot's"))  # fmt: skip
            continue
        if ref not in state.owned and (conflict := _held_elsewhere(kube, bot, manifest)):
            refused.append(conflict)
            continue
        try:
            kube.apply(manifest)
            state.owned.add(ref)
        except ApiException as error:
            refused.append(
                Refusal(
                    manifest["kind"],
                    manifest["metadata"]["name"],
                    manifest["metadata"]["labels"].get("app.kubernetes.io/component", ""),
                    str(error.reason),
                )
            )
    return refused


def _not_applied(manifest: Manifest, why: str) -> Refusal:
    metadata = manifest["metadata"]
    return Refusal(
        manifest["kind"],
        metadata["name"],
        metadata["labels"].get("app.kubernetes.io/component", ""),
        why,
        reason=CONFLICT,
    )


def _mounts_secret(found: Any, name: str) -> bool:
    """Whether a manifest reads the Secret `name` anywhere: a volume, a projected source, an
    environment variable's secretKeyRef."""
    if isinstance(found, dict):
        if found.get("secretName") == name:
            return True
        reference = found.get("secretKeyRef") or found.get("secret")
        if isinstance(reference, dict) and reference.get("name") == name:
            return True
        return any(_mounts_secret(value, name) for value in found.values())
    if isinstance(found, list):
        return any(_mounts_secret(item, name) for item in found)
    return False


def prune(kube: Cluster, bot: ChatBot, desired: list[Manifest], body: kopf.Body) -> None:
    for ref in plan(kube.owned(bot), desired).delete:
        kube.delete(bot.namespace, ref)
        kopf.info(body, reason="Deleted", message=f"{ref.kind} {ref.name} is no longer in the spec")


def announce(body: kopf.Body, reason: str, found: list[Any], before: list[Any]) -> None:
    """A Warning Event for each new problem, not again on every retry while it lasts."""
    for item in found:
        if item not in before:
            kopf.warn(body, reason=reason, message=item.describe())


def put_back(bot: ChatBot, ref: ObjectRef) -> None:
    """A child changed or deleted by hand, applied again as the last converge rendered it.
    The caller holds the ChatBot's lock."""
    state = known(bot.namespace, bot.name)
    if state.inputs is None:
        return  # not converged by this process yet: its reconcile will apply everything
    for manifest in render(bot, state.inputs):
        if ObjectRef.of(manifest) == ref:
            held = [item for item in state.refused if item.kind == "Secret"]
            refused = apply_each(cluster(), bot, [manifest], state, held)
            state.refused = [r for r in state.refused if (r.kind, r.name) != (ref.kind, ref.name)]
            state.refused.extend(refused)
            return


def ingest_run(jobs: tuple[IngestJob, ...], bot: ChatBot) -> IngestRun | None:
    """The newest ingest Job of the ChatBot, with what its Pod said when it failed (read
    once per failed Job)."""
    if not jobs:
        return None
    newest = max(jobs, key=lambda job: (job.created, job.name))
    name, failed = newest.name, newest.failed
    if not failed:
        return IngestRun(name)
    state = known(bot.namespace, bot.name)
    if state.failed_ingest is None or state.failed_ingest[0] != name:
        state.failed_ingest = (name, cluster().job_failure(bot.namespace, name))
    said = state.failed_ingest[1]
    return IngestRun(name, failed=True, reason=f"{failed}: {said}" if said else failed)


def write_status(
    bot: ChatBot, previous: ChatBotStatus, observed: Observed, body: kopf.Body
) -> None:
    """Compute the status from the children and write it where it changed, only over the
    ChatBot version it was computed from. When the ChatBot has changed since, it is read
    again and the status computed anew from it, unless its spec has moved on, whose own
    reconcile writes it."""
    state = known(bot.namespace, bot.name)
    ingest = ingest_run(observed.ingest_jobs, bot) if bot.spec.knowledge_base.enabled else None
    resource_version = str(body.get("metadata", {}).get("resourceVersion") or "")
    for _ in range(3):
        status = compute_status(
            bot,
            observed.workloads,
            state.missing,
            previous,
            ingest,
            state.refused,
            state.missing_sources,
            observed.troubles,
        )
        if status == previous:
            return
        kube = cluster()
        try:
            written = kube.patch_status(
                bot.namespace, bot.name, status.model_dump(by_alias=True), resource_version
            )
        except ApiException as error:
            if error.status == 404:
                raise ChatBotGone(bot.uid) from None
            raise
        if written:
            if status.phase != previous.phase:
                message = next(c.message for c in status.conditions if c.type == "Ready")
                kopf.info(body, reason=status.phase, message=message)
            return
        fresh = kube.chatbot(bot.namespace, bot.name)
        if fresh is None or fresh["metadata"].get("uid") != bot.uid:
            raise ChatBotGone(bot.uid)
        if fresh["metadata"].get("generation", 0) != bot.generation:
            return
        previous = ChatBotStatus.model_validate(fresh.get("status") or {})
        resource_version = str(fresh["metadata"]["resourceVersion"])


def body_of(parent: dict[str, Any]) -> kopf.Body:
    """A body kopf can post Events to, from a ChatBot as the index holds it."""
    raw = cast(kopf.RawBody, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ChatBot", **parent})
    return kopf.Body(raw)
