"""Converge's steps against a stand-in for the API server: each child applied on its own."""

from __future__ import annotations

from typing import Any

from kubernetes.client.exceptions import ApiException

from tertulia.operator.converge import apply_each, check_secrets
from tertulia.operator.render import render_all
from tests.unit.operator.test_render import IMAGE, example


class Refusing:
    """Applies everything but the objects named in `refuse` (by kind and name), answered
    with the status given there."""

    def __init__(self, refuse: dict[tuple[str, str], int]) -> None:
        self.refuse = refuse
        self.applied: list[tuple[str, str]] = []

    def apply(self, manifest: dict[str, Any]) -> None:
        ref = (manifest["kind"], manifest["metadata"]["name"])
        if ref in self.refuse:
            raise ApiException(status=self.refuse[ref], reason=f"{ref[1]} is invalid: because")
        self.applied.append(ref)


def test_one_refused_child_does_not_stop_the_others() -> None:
    manifests = render_all(example("all-platforms"), image=IMAGE)
    refs = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    # The model's workload, early: everything after it must still be applied.
    model = ("StatefulSet", "tertulia-model")
    assert refs.index(model) < len(refs) // 2
    kube = Refusing({model: 422})
    refused = apply_each(kube, manifests)
    assert [(r.kind, r.name, r.component, r.message) for r in refused] == [
        (*model, "model", "tertulia-model is invalid: because")
    ]
    assert kube.applied == [ref for ref in refs if ref != model]


def test_a_server_error_is_reported_too_and_the_rest_applied() -> None:
    # Server-side apply answers 500 when a pass-through field fails its conversion.
    manifests = render_all(example("all-platforms"), image=IMAGE)
    first = (manifests[0]["kind"], manifests[0]["metadata"]["name"])
    kube = Refusing({first: 500})
    refused = apply_each(kube, manifests)
    assert [(r.kind, r.name) for r in refused] == [first]
    assert len(kube.applied) == len(manifests) - 1


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
