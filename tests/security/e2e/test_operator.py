"""Attacks on the operator, as a careless or hostile tenant makes them, against the real API
server and the operator's own process: references that name paths, names that another
application already holds, pods that would not pass the restricted profile, labels left on
what a ChatBot no longer names."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e.test_operator import (
    EXAMPLE_SECRETS,
    READY_TIMEOUT,
    Operator,
    apply,
    chatbot,
    condition,
    create_secrets,
    events,
    fresh_namespace,
    load_example,
    operator,  # noqa: F401 - the module's operator, a fixture
    wait_phase,
)
from tests.testbed.kube import ControlPlane
from tests.testbed.process import eventually

WATCH_LABEL = "tertulia.dev/watched"


@pytest.fixture
def namespace(control_plane: ControlPlane, operator: Operator) -> Iterator[str]:  # noqa: F811
    with fresh_namespace(control_plane, "attack") as name:
        yield name


def minimal(name: str = "shop", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tertulia.dev/v1alpha1",
        "kind": "ChatBot",
        "metadata": {"name": name},
        "spec": {"model": {"engine": "ollama", "name": "llama3.2:1b"}, **spec},
    }


# References a tenant could write to make the operator read, or a pod mount, something of
# another namespace or another path; each refused at admission, naming the field.
REFERENCES: list[tuple[str, dict[str, Any], str]] = [
    (
        "a Secret name that is a path",
        {"platforms": {"telegram": {"tokenSecretRef": {"name": "../../kube-system/secrets/x",
                                                        "key": "token"}}}},
        "spec.platforms.telegram.tokenSecretRef.name",
    ),
    (
        "a Secret key that climbs out of its volume",
        {"platforms": {"discord": {"tokenSecretRef": {"name": "discord", "key": ".."}}}},
        "spec.platforms.discord.tokenSecretRef.key",
    ),
    (
        "a Secret key with a slash",
        {"platforms": {"discord": {"tokenSecretRef": {"name": "discord", "key": "a/token"}}}},
        "spec.platforms.discord.tokenSecretRef.key",
    ),
    (
        "a ConfigMap name that is a path",
        {"knowledgeBase": {"enabled": True, "sources": [{"configMap": {"name": "../docs"}}]}},
        "spec.knowledgeBase.sources[0].configMap.name",
    ),
    (
        "an API keys Secret in capitals",
        {"gateway": {"apiKeysSecretRef": {"name": "Keys"}}},
        "spec.gateway.apiKeysSecretRef.name",
    ),
    (
        "a pull Secret that is a path",
        {"imagePullSecrets": [{"name": "../registry"}]},
        "spec.imagePullSecrets[0].name",
    ),
    (
        "a model file that climbs out of its claim",
        {"model": {"engine": "llamacpp", "source": "pvc://weights/../../etc/passwd"}},
        "spec.model.source",
    ),
    (
        "a hub source with an empty path segment",
        {"model": {"engine": "llamacpp", "source": "hf://owner//model.gguf"}},
        "spec.model.source",
    ),
    (
        "a hub repository of vLLM with a dot segment",
        {"model": {"engine": "vllm", "source": "hf://owner/."}},
        "spec.model.source",
    ),
    (
        "an embeddings source with an empty path segment",
        {"knowledgeBase": {"enabled": True, "embedding": {"source": "hf://a/b//m.gguf"}}},
        "spec.knowledgeBase.embedding.source",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "spec", "field"), REFERENCES, ids=[case for case, _, _ in REFERENCES]
)
def test_a_reference_that_names_a_path_is_refused_naming_the_field(
    control_plane: ControlPlane, namespace: str, case: str, spec: dict[str, Any], field: str
) -> None:
    body = minimal()
    for section, values in spec.items():
        if isinstance(values, dict) and isinstance(body["spec"].get(section), dict):
            body["spec"][section] = {**body["spec"][section], **values}
        else:
            body["spec"][section] = values

    result = apply(control_plane, namespace, body)

    assert result.returncode != 0, case
    assert field in result.stderr, result.stderr


def test_the_operator_never_takes_over_what_it_did_not_create(
    control_plane: ControlPlane, namespace: str
) -> None:
    """An application's own `shop-gateway` Deployment and `shop-api-keys` Secret: a ChatBot
    named `shop` reports a Conflict naming them, leaves them as they are, and deleting it
    leaves them there."""
    api = control_plane.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": "shop"}
    app_deployment = {
        "metadata": {"name": "shop-gateway", "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "shop", "image": "shop:1"}]},
            },
        },
    }
    apps.create_namespaced_deployment(namespace, app_deployment)
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "shop-api-keys"}, "stringData": {"db-password": "hunter2-shop"}},
    )
    before: tuple[Any, Any] = (
        apps.read_namespaced_deployment("shop-gateway", namespace),
        core.read_namespaced_secret("shop-api-keys", namespace),
    )

    assert apply(control_plane, namespace, minimal()).returncode == 0
    ready = eventually(
        lambda: (
            (body := chatbot(control_plane, namespace, "shop")).get("status", {}).get("conditions")
            and condition(body, "Ready")["reason"] == "Conflict"
            and body
        ),
        READY_TIMEOUT,
        "the ChatBot to report the conflict",
    )
    gateway = condition(ready, "GatewayReady")
    assert gateway["reason"] == "Conflict"
    assert "Deployment shop-gateway" in gateway["message"]
    assert "Secret shop-api-keys" in condition(ready, "Ready")["message"] + gateway["message"]
    warned = [e for e in events(control_plane, namespace, "shop") if e.reason == "Conflict"]
    assert any("shop-gateway" in e.message for e in warned)
    # Both untouched: no owner, no field the operator manages, not a label or key added.
    after: tuple[Any, Any] = (
        apps.read_namespaced_deployment("shop-gateway", namespace),
        core.read_namespaced_secret("shop-api-keys", namespace),
    )
    for old, new in zip(before, after, strict=True):
        assert not new.metadata.owner_references
        assert new.metadata.labels == old.metadata.labels
        managers = {entry.manager for entry in new.metadata.managed_fields or []}
        assert "tertulia-operator" not in managers, managers
    assert after[0].spec.template == before[0].spec.template
    assert after[1].metadata.resource_version == before[1].metadata.resource_version
    # What had no other owner was made, and is the ChatBot's.
    model = apps.read_namespaced_deployment("shop-model", namespace)
    assert model.metadata.owner_references[0].uid == ready["metadata"]["uid"]

    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        "tertulia.dev", "v1alpha1", namespace, "chatbots", "shop"
    )
    eventually(
        lambda: not _exists(lambda: apps.read_namespaced_deployment("shop-model", namespace)),
        READY_TIMEOUT,
        "the ChatBot's own children to be collected",
    )
    assert _exists(lambda: apps.read_namespaced_deployment("shop-gateway", namespace))
    kept = core.read_namespaced_secret("shop-api-keys", namespace)
    assert set(kept.data) == {"db-password"}


def _exists(read: Any) -> bool:
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def restricted(control_plane: ControlPlane, name: str) -> None:
    client.CoreV1Api(control_plane.api_client()).patch_namespace(
        name,
        {
            "metadata": {
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                }
            }
        },
    )


ENGINES = {
    "vllm": {"engine": "vllm", "name": "Qwen/Qwen2.5-0.5B-Instruct", "gpus": 1},
    "ollama": {"engine": "ollama", "name": "llama3.2:1b"},
    "llamacpp": {"engine": "llamacpp", "source": "hf://owner/repo/model.gguf"},
}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_pod_is_admitted_where_the_restricted_profile_is_enforced(
    control_plane: ControlPlane, namespace: str, engine: str
) -> None:
    """The API server's own Pod Security admission takes every pod of a whole stack (the
    engine's model server, Redis, Weaviate, the embeddings server, the ingest Job, the
    gateway and every bot) in a namespace that enforces the restricted profile."""
    restricted(control_plane, namespace)
    body = copy.deepcopy(load_example("all-platforms"))
    body["spec"]["model"] = ENGINES[engine]
    body["spec"]["knowledgeBase"] = {"enabled": True}
    create_secrets(control_plane, namespace, EXAMPLE_SECRETS["all-platforms"])
    assert apply(control_plane, namespace, body).returncode == 0
    ready = wait_phase(control_plane, namespace, body["metadata"]["name"])
    assert condition(ready, "ModelReady")["status"] == "True"
    refused = [
        event.message
        for event in client.CoreV1Api(control_plane.api_client())
        .list_namespaced_event(namespace)
        .items
        if event.reason == "FailedCreate" and "violates PodSecurity" in (event.message or "")
    ]
    assert not refused, refused


def test_the_watch_label_leaves_a_users_objects_once_no_chatbot_names_them(
    control_plane: ControlPlane, namespace: str
) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    create_secrets(control_plane, namespace, {"tg": {"token": "1:e2e-token"}})
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "faq"}, "data": {"faq.md": "# FAQ\n\nYes."}}
    )
    body = minimal(
        platforms={"telegram": {"tokenSecretRef": {"name": "tg", "key": "token"}}},
        knowledgeBase={"enabled": True, "sources": [{"configMap": {"name": "faq"}}]},
    )

    def labelled() -> set[str]:
        found = set()
        if WATCH_LABEL in (core.read_namespaced_secret("tg", namespace).metadata.labels or {}):
            found.add("tg")
        if WATCH_LABEL in (core.read_namespaced_config_map("faq", namespace).metadata.labels or {}):
            found.add("faq")
        return found

    assert apply(control_plane, namespace, body).returncode == 0
    eventually(lambda: labelled() == {"tg", "faq"}, READY_TIMEOUT, "both to be labelled")
    # The platform dropped: its Secret is no longer the ChatBot's concern.
    del body["spec"]["platforms"]
    assert apply(control_plane, namespace, body).returncode == 0
    eventually(lambda: labelled() == {"faq"}, READY_TIMEOUT, "the Secret to be released")
    client.CustomObjectsApi(control_plane.api_client()).delete_namespaced_custom_object(
        "tertulia.dev", "v1alpha1", namespace, "chatbots", "shop"
    )
    eventually(lambda: labelled() == set(), READY_TIMEOUT, "the ConfigMap to be released")
