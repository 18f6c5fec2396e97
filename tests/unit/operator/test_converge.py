"""Converge's steps against a stand-in for the API server: each child applied on its own."""

from __future__ import annotations

from typing import Any, cast

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

import tertulia.operator.converge as converge_module
from tertulia.operator.api import ChatBotStatus
from tertulia.operator.converge import Known, apply_each, check_secrets, forget, write_status
from tertulia.operator.render import render_all
from tertulia.operator.seen import Observed
from tertulia.operator.status import Refusal, Workload, compute_status
from tests.unit.operator.test_render import (
    IMAGE,
    REPO,
    example,
    load,
    with_external_redis,
    with_external_weaviate,
    with_spec,
)


class Refusing:
    """Applies everything but the objects named in `refuse` (by kind and name), answered
    with the status given there; the names in `foreign` exist and are another's."""

    def __init__(
        self, refuse: dict[tuple[str, str], int], foreign: set[tuple[str, str]] | None = None
    ) -> None:
        self.refuse = refuse
        self.foreign = foreign or set()
        self.applied: list[tuple[str, str]] = []
        self.looked_up: list[tuple[str, str]] = []

    def apply(self, manifest: dict[str, Any]) -> None:
        ref = (manifest["kind"], manifest["metadata"]["name"])
        if ref in self.refuse:
            raise ApiException(status=self.refuse[ref], reason=f"{ref[1]} is invalid: because")
        self.applied.append(ref)

    def held_by(self, manifest: dict[str, Any], owner_uid: str) -> bool | None:
        ref = (manifest["kind"], manifest["metadata"]["name"])
        self.looked_up.append(ref)
        return False if ref in self.foreign else None


def test_one_refused_child_does_not_stop_the_others() -> None:
    bot = example("all-platforms")
    manifests = render_all(bot, image=IMAGE)
    refs = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    # The model's workload, early: everything after it must still be applied.
    model = ("StatefulSet", "tertulia-model")
    assert refs.index(model) < len(refs) // 2
    kube = Refusing({model: 422})
    refused = apply_each(kube, bot, manifests, Known())
    assert [(r.kind, r.name, r.component, r.message) for r in refused] == [
        (*model, "model", "tertulia-model is invalid: because")
    ]
    assert kube.applied == [ref for ref in refs if ref != model]


def test_a_server_error_is_reported_too_and_the_rest_applied() -> None:
    # Server-side apply answers 500 when a pass-through field fails its conversion.
    bot = example("all-platforms")
    manifests = render_all(bot, image=IMAGE)
    first = (manifests[0]["kind"], manifests[0]["metadata"]["name"])
    kube = Refusing({first: 500})
    refused = apply_each(kube, bot, manifests, Known())
    assert [(r.kind, r.name) for r in refused] == [first]
    assert len(kube.applied) == len(manifests) - 1


def test_a_child_whose_name_another_holds_is_left_alone_as_a_conflict() -> None:
    bot = example("all-platforms")
    manifests = render_all(bot, image=IMAGE)
    gateway = ("Deployment", "tertulia-gateway")
    kube = Refusing({}, foreign={gateway})
    state = Known()

    refused = apply_each(kube, bot, manifests, state)

    assert [(r.kind, r.name, r.reason) for r in refused] == [(*gateway, "Conflict")]
    assert "not this ChatBot's" in refused[0].message
    assert gateway not in kube.applied
    assert len(kube.applied) == len(manifests) - 1
    # What it applied is known to be its own: the next converge looks up only the conflict.
    kube.looked_up.clear()
    apply_each(kube, bot, manifests, state)
    assert kube.looked_up == [gateway]


def test_a_workload_that_would_mount_a_secret_another_holds_is_not_applied() -> None:
    bot = example("all-platforms")
    manifests = render_all(bot, image=IMAGE)
    held = [Refusal("Secret", "tertulia-api-keys", "gateway", "another's", reason="Conflict")]
    kube = Refusing({})

    refused = apply_each(kube, bot, manifests, Known(), held)

    # The gateway and every bot read the generated keys; nothing else does.
    skipped = {(r.kind, r.name) for r in refused}
    assert ("Deployment", "tertulia-gateway") in skipped
    assert {("Deployment", f"tertulia-{p}") for p in ("slack", "discord", "telegram")} <= skipped
    assert all("Secret tertulia-api-keys" in r.message for r in refused)
    assert not skipped & set(kube.applied)
    assert ("StatefulSet", "tertulia-model") in kube.applied


class Secrets:
    def __init__(self, found: dict[str, tuple[str, frozenset[str]]]) -> None:
        self.found = found
        self.reads: list[str] = []

    def secret_keys(self, namespace: str, name: str) -> tuple[str, frozenset[str]] | None:
        self.reads.append(name)
        return self.found.get(name)


def test_secrets_are_read_once_each_and_a_missing_key_is_named() -> None:
    bot = example("all-platforms")
    kube = Secrets(
        {
            "slack": ("11", frozenset({"bot-token", "signing-secret"})),
            "telegram": ("12", frozenset({"token"})),  # no webhook-secret
            # Made by an older release: one key for every bot, none for Discord.
            "tertulia-api-keys": ("13", frozenset({"admin", "slack", "telegram"})),
        }
    )
    missing, versions = check_secrets(kube, bot)
    assert sorted(kube.reads) == sorted(set(kube.reads))
    assert sorted((m.platform, m.secret, m.key) for m in missing) == [
        ("discord", "discord", "token"),
        ("discord", "tertulia-api-keys", "discord"),
        ("telegram", "telegram", "webhook-secret"),
    ]
    assert versions == {"slack": "11", "telegram": "12", "tertulia-api-keys": "13"}


def test_an_external_redis_secret_or_key_that_is_missing_is_named_as_memorys() -> None:
    bot = with_external_redis(example("local"))
    kube = Secrets(
        {"managed-redis": ("21", frozenset({"password"})), "tertulia-api-keys": ("1", frozenset())}
    )
    missing, versions = check_secrets(kube, bot)
    assert sorted((m.platform, m.secret, m.key) for m in missing) == [
        ("memory", "managed-redis", "auth"),
        ("memory", "managed-redis-ca", "ca.pem"),
    ]
    assert versions["managed-redis"] == "21"


def test_an_external_weaviates_key_is_read_and_named_as_the_knowledge_bases() -> None:
    bot = with_external_weaviate(example("vllm-gpu-slack-kb"))
    kube = Secrets({"weaviate-cloud": ("31", frozenset({"read-key"}))})
    missing, versions = check_secrets(kube, bot)
    assert ("knowledge-base", "weaviate-cloud", "admin-key") in {
        (m.platform, m.secret, m.key) for m in missing
    }
    assert versions["weaviate-cloud"] == "31"
    assert "harbour-knowledge-base" not in kube.reads  # no generated key to read


def test_the_backup_buckets_credentials_are_read_and_named_as_the_knowledge_bases() -> None:
    bucket = {
        "bucket": "harbour-backups",
        "accessKeyIdSecretRef": {"name": "backup-bucket", "key": "access-key"},
        "secretAccessKeySecretRef": {"name": "backup-bucket", "key": "secret-key"},
    }
    bot = with_spec(example("vllm-gpu-slack-kb"), {"knowledgeBase": {"backup": {"s3": bucket}}})
    kube = Secrets({"backup-bucket": ("41", frozenset({"access-key"}))})
    missing, versions = check_secrets(kube, bot)
    assert ("knowledge-base", "backup-bucket", "secret-key") in {
        (m.platform, m.secret, m.key) for m in missing
    }
    assert versions["backup-bucket"] == "41"


class StatusStore:
    """The ChatBot's status as the API server holds it, written only over the version it
    was computed from (the resourceVersion precondition), as `Cluster.patch_status` does."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.writes: list[dict[str, Any]] = []

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str = ""
    ) -> bool:
        if resource_version and resource_version != self.body["metadata"]["resourceVersion"]:
            return False
        self.writes.append(status)
        self.body = {
            **self.body,
            "status": status,
            "metadata": {**self.body["metadata"], "resourceVersion": str(len(self.writes) + 10)},
        }
        return True

    def chatbot(self, namespace: str, name: str) -> dict[str, Any]:
        return self.body


def _ready_workloads(bot: Any) -> Observed:
    components = ("model", "gateway", "memory")
    return Observed({c: Workload(replicas=1, ready=1) for c in components}, ())


def test_a_status_from_a_stale_copy_is_computed_again_from_the_newer_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bot = load(REPO / "manifests" / "examples" / "cpu-ollama.yaml")
    forget(bot.namespace, bot.name)
    observed = _ready_workloads(bot)
    # What another worker wrote meanwhile: every component Ready since a known moment.
    newer = compute_status(bot, observed.workloads, [], ChatBotStatus(), None, [], [])
    newer = newer.model_copy(
        update={
            "conditions": [
                c.model_copy(update={"last_transition_time": "2026-12-01T09:00:00Z"})
                for c in newer.conditions
            ]
        }
    )
    meta = {
        "namespace": bot.namespace,
        "name": bot.name,
        "generation": bot.generation,
        "uid": bot.uid,
    }
    store = StatusStore(
        {"metadata": {**meta, "resourceVersion": "7"}, "status": newer.model_dump(by_alias=True)}
    )
    monkeypatch.setattr(converge_module, "_cluster", store)
    monkeypatch.setattr(kopf, "info", lambda *_, **__: None)  # Events need a running kopf
    # This worker's copy is older (version 5, nothing Ready yet).
    stale = kopf.Body(cast(kopf.RawBody, {"metadata": {**meta, "resourceVersion": "5"}}))

    write_status(bot, ChatBotStatus(), observed, stale)

    # Nothing written over version 7 from version 5, and nothing needed: the newer status
    # already says it, with its own transition times.
    assert store.writes == []
    assert store.body["status"] == newer.model_dump(by_alias=True)


def test_a_status_write_over_the_version_it_came_from_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bot = load(REPO / "manifests" / "examples" / "cpu-ollama.yaml")
    forget(bot.namespace, bot.name)
    meta = {
        "namespace": bot.namespace,
        "name": bot.name,
        "generation": bot.generation,
        "uid": bot.uid,
    }
    store = StatusStore({"metadata": {**meta, "resourceVersion": "5"}, "status": {}})
    monkeypatch.setattr(converge_module, "_cluster", store)
    monkeypatch.setattr(kopf, "info", lambda *_, **__: None)  # Events need a running kopf
    body = kopf.Body(cast(kopf.RawBody, {"metadata": {**meta, "resourceVersion": "5"}}))

    write_status(bot, ChatBotStatus(), _ready_workloads(bot), body)

    assert len(store.writes) == 1
    assert store.writes[0]["phase"] == "Ready"


def test_an_api_path_quotes_every_segment_so_no_name_reaches_another_path() -> None:
    from tertulia.operator.kube import api_path

    assert api_path("/api/v1", "namespaces", "chat", "secrets", "tg") == (
        "/api/v1/namespaces/chat/secrets/tg"
    )
    climbing = api_path("/api/v1", "namespaces", "chat", "secrets", "../../kube-system/x")
    assert climbing == "/api/v1/namespaces/chat/secrets/..%2F..%2Fkube-system%2Fx"
    assert api_path("/api/v1", "namespaces", "a?b=c", "secrets") == (
        "/api/v1/namespaces/a%3Fb%3Dc/secrets"
    )


class Labels:
    def __init__(self) -> None:
        self.released: list[tuple[str, str, str]] = []

    def unwatch(self, namespace: str, collection: str, name: str) -> None:
        self.released.append((namespace, collection, name))


@pytest.mark.parametrize(
    ("labelled", "bots", "released"),
    [
        # Every labelled object named by some ChatBot of the namespace: none released.
        ({("secrets", "slack"), ("secrets", "tertulia-api-keys")}, ["all-platforms"], []),
        # The last ChatBot gone: every user object it had labelled.
        ({("secrets", "slack"), ("configmaps", "faq")}, [], ["configmaps/faq", "secrets/slack"]),
        # One no ChatBot names, beside one still named.
        (
            {("secrets", "slack"), ("secrets", "old-token")},
            ["all-platforms"],
            ["secrets/old-token"],
        ),
    ],
)
def test_the_watch_label_is_released_from_what_no_chatbot_names(
    labelled: set[tuple[str, str]], bots: list[str], released: list[str]
) -> None:
    from tertulia.operator.converge import release_unnamed

    kube = Labels()
    release_unnamed(kube, labelled, [example(name) for name in bots], "chat")
    assert [f"{collection}/{name}" for _, collection, name in kube.released] == released
