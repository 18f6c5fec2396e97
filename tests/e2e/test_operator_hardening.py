"""The operator never gets stuck, against the real control plane: a refused child is
reported and the rest applied; edits the API cannot carry out are refused at admission and
the others carried out; every owned kind deleted by hand is put back; a rotated or deleted
Secret shows within seconds and rolls the pods that read it."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e.test_operator import (
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


@pytest.fixture
def namespace(control_plane: ControlPlane, operator: Operator) -> Iterator[str]:  # noqa: F811
    with fresh_namespace(control_plane, "hard") as name:
        yield name


def helpdesk(**model: Any) -> dict[str, Any]:
    """The CPU example, with a knowledge base and changes to its model."""
    body = load_example("cpu-ollama")
    body["spec"]["model"].update(model)
    body["spec"]["knowledgeBase"] = {"enabled": True, "storage": "1Gi"}
    return body


def test_a_refused_child_is_reported_on_its_condition_and_the_rest_applied(
    control_plane: ControlPlane, namespace: str
) -> None:
    # The CRD passes resources through; the API server refuses the StatefulSet they reach.
    body = helpdesk(resources={"requests": {"cpu": "lots"}})
    assert apply(control_plane, namespace, body).returncode == 0

    refused = eventually(
        lambda: (
            (found := condition_of(control_plane, namespace, "ModelReady")).get("reason")
            == "ApplyFailed"
            and found
        ),
        60,
        "ModelReady to report the refusal",
    )
    assert "helpdesk-model" in refused["message"] and "quantities" in refused["message"]
    # Everything after the model was still applied and came up.
    for later in ("GatewayReady", "KnowledgeBaseReady"):
        eventually(
            lambda: condition_of(control_plane, namespace, later).get("status") == "True",  # noqa: B023
            90,
            f"{later} to be True beside the refused model server",
        )
    assert chatbot(control_plane, namespace, "helpdesk")["status"]["phase"] == "Degraded"
    warned = [e for e in events(control_plane, namespace, "helpdesk") if e.reason == "ApplyFailed"]
    assert len(warned) == 1 and "helpdesk-model" in warned[0].message

    body["spec"]["model"].pop("resources")
    assert apply(control_plane, namespace, body).returncode == 0
    wait_phase(control_plane, namespace, "helpdesk")


def condition_of(control_plane: ControlPlane, namespace: str, kind: str) -> dict[str, Any]:
    body = chatbot(control_plane, namespace, "helpdesk")
    if not (body.get("status") or {}).get("conditions"):
        return {}
    return condition(body, kind)


# Edits a running ChatBot cannot take in place, each refused naming its field.
IMMUTABLE: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "knowledge base storage",
        lambda spec: spec["knowledgeBase"].update(storage="5Gi"),
        "spec.knowledgeBase.storage",
    ),
    (
        "knowledge base storage class",
        lambda spec: spec["knowledgeBase"].update(storageClassName="fast"),
        "spec.knowledgeBase.storageClassName",
    ),
    (
        "per-replica cache size",
        lambda spec: spec["model"]["cache"].update(size="20Gi"),
        "spec.model.cache.size",
    ),
    (
        "cache storage class",
        lambda spec: spec["model"]["cache"].update(storageClassName="fast"),
        "spec.model.cache.storageClassName",
    ),
    (
        "memory storage",
        lambda spec: spec.setdefault("gateway", {}).setdefault("memory", {}).update(storage="5Gi"),
        "spec.gateway.memory.storage",
    ),
    (
        "memory on an emptyDir",
        lambda spec: (
            spec.setdefault("gateway", {}).setdefault("memory", {}).update(persistent=False)
        ),
        "spec.gateway.memory.persistent",
    ),
]


def test_edits_that_cannot_be_carried_out_are_refused_and_the_others_carried_out(
    control_plane: ControlPlane, namespace: str
) -> None:
    body = helpdesk()
    assert apply(control_plane, namespace, body).returncode == 0
    wait_phase(control_plane, namespace, "helpdesk")
    for case, change, field in IMMUTABLE:
        edited = json.loads(json.dumps(body))
        change(edited["spec"])
        result = apply(control_plane, namespace, edited)
        assert result.returncode != 0, case
        assert field in result.stderr, result.stderr

    # A new access mode is carried out: one shared claim instead of one per replica.
    shared = json.loads(json.dumps(body))
    shared["spec"]["model"]["cache"] = {"size": "10Gi", "accessMode": "ReadWriteMany"}
    assert apply(control_plane, namespace, shared).returncode == 0
    apps = client.AppsV1Api(control_plane.api_client())
    eventually(
        lambda: (
            not _exists(lambda: apps.read_namespaced_stateful_set("helpdesk-model", namespace))
            and _exists(lambda: apps.read_namespaced_deployment("helpdesk-model", namespace))
        ),
        60,
        "the model server to become a Deployment",
    )
    # A shared claim may grow, never shrink.
    grown = json.loads(json.dumps(shared))
    grown["spec"]["model"]["cache"]["size"] = "20Gi"
    assert apply(control_plane, namespace, grown).returncode == 0
    shrunk = json.loads(json.dumps(grown))
    shrunk["spec"]["model"]["cache"]["size"] = "5Gi"
    result = apply(control_plane, namespace, shrunk)
    assert result.returncode != 0 and "spec.model.cache.size" in result.stderr
    # A changed image is carried out by a new ingest Job, never an edit of the old one
    # (tests/e2e/test_operator.py and the cluster tier's helm upgrade).


def _exists(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def test_every_owned_kind_deleted_by_hand_is_put_back(
    control_plane: ControlPlane, namespace: str, record_property: Callable[[str, Any], None]
) -> None:
    body = helpdesk()
    body["spec"]["gateway"] = {
        "ingress": {"host": "help.example.com"},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
    }
    assert apply(control_plane, namespace, body).returncode == 0
    wait_phase(control_plane, namespace, "helpdesk")
    api = control_plane.api_client()
    core, networking = client.CoreV1Api(api), client.NetworkingV1Api(api)
    autoscaling, apps = client.AutoscalingV2Api(api), client.AppsV1Api(api)
    kinds: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "NetworkPolicy": (
            lambda: networking.read_namespaced_network_policy("helpdesk-model-ingress", namespace),
            lambda: networking.delete_namespaced_network_policy(
                "helpdesk-model-ingress", namespace
            ),
        ),
        "ServiceAccount": (
            lambda: core.read_namespaced_service_account("helpdesk-workload", namespace),
            lambda: core.delete_namespaced_service_account("helpdesk-workload", namespace),
        ),
        "Ingress": (
            lambda: networking.read_namespaced_ingress("helpdesk-gateway", namespace),
            lambda: networking.delete_namespaced_ingress("helpdesk-gateway", namespace),
        ),
        "HorizontalPodAutoscaler": (
            lambda: autoscaling.read_namespaced_horizontal_pod_autoscaler(
                "helpdesk-gateway", namespace
            ),
            lambda: autoscaling.delete_namespaced_horizontal_pod_autoscaler(
                "helpdesk-gateway", namespace
            ),
        ),
        "Service": (
            lambda: core.read_namespaced_service("helpdesk-memory", namespace),
            lambda: core.delete_namespaced_service("helpdesk-memory", namespace),
        ),
        "StatefulSet": (
            lambda: apps.read_namespaced_stateful_set("helpdesk-knowledge-base", namespace),
            lambda: apps.delete_namespaced_stateful_set("helpdesk-knowledge-base", namespace),
        ),
        "Secret": (
            lambda: core.read_namespaced_secret("helpdesk-api-keys", namespace),
            lambda: core.delete_namespaced_secret("helpdesk-api-keys", namespace),
        ),
    }
    repaired: dict[str, float] = {}
    for kind, (read, delete) in kinds.items():
        before = read().metadata.uid
        delete()
        started = time.monotonic()
        eventually(
            lambda read=read, before=before: _uid(read) not in (None, before),  # type: ignore[misc]
            60,
            f"the {kind} to be put back",
            interval=0.1,
        )
        repaired[kind] = round(time.monotonic() - started, 2)
    record_property("repair_seconds", repaired)
    print(f"repair seconds: {repaired}")
    # The new API keys rolled the gateway, which reads them at start.
    gateway = apps.read_namespaced_deployment("helpdesk-gateway", namespace)
    assert "tertulia.dev/secrets-version" in gateway.spec.template.metadata.annotations


def _uid(read: Callable[[], Any]) -> str | None:
    try:
        return str(read().metadata.uid)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def test_a_rotated_token_rolls_its_bot_and_a_deleted_one_shows_at_once(
    control_plane: ControlPlane, namespace: str, record_property: Callable[[str, Any], None]
) -> None:
    create_secrets(control_plane, namespace, {"discord": {"token": "first-token-0001"}})
    body = load_example("cpu-ollama")
    body["spec"]["platforms"] = {"discord": {"tokenSecretRef": {"name": "discord", "key": "token"}}}
    assert apply(control_plane, namespace, body).returncode == 0
    wait_phase(control_plane, namespace, "helpdesk")
    apps = client.AppsV1Api(control_plane.api_client())
    core = client.CoreV1Api(control_plane.api_client())

    def version() -> str:
        bot = apps.read_namespaced_deployment("helpdesk-discord", namespace)
        return str(bot.spec.template.metadata.annotations["tertulia.dev/secrets-version"])

    before = version()
    core.patch_namespaced_secret("discord", namespace, {"stringData": {"token": "second-0002"}})
    started = time.monotonic()
    eventually(lambda: version() != before, 30, "the bot to roll on the new token", interval=0.1)
    rolled = round(time.monotonic() - started, 2)

    core.delete_namespaced_secret("discord", namespace)
    started = time.monotonic()
    eventually(
        lambda: (
            condition_of(control_plane, namespace, "PlatformsReady").get("reason")
            == "SecretNotFound"
        ),
        30,
        "PlatformsReady to say the token is gone",
        interval=0.1,
    )
    shown = round(time.monotonic() - started, 2)
    record_property("secret_seconds", {"rolled": rolled, "deletion_shown": shown})
    print(f"token rotation rolled the bot in {rolled}s; deletion shown in {shown}s")
    # No value of the token anywhere the operator writes.
    said = json.dumps(chatbot(control_plane, namespace, "helpdesk")["status"]) + "".join(
        e.message for e in events(control_plane, namespace, "helpdesk")
    )
    assert "first-token-0001" not in said and "second-0002" not in said


def test_an_older_generated_key_secret_gets_the_keys_it_lacks_and_keeps_its_own(
    control_plane: ControlPlane, namespace: str
) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    create_secrets(control_plane, namespace, {"discord": {"token": "t"}})
    body = load_example("cpu-ollama")
    body["spec"]["platforms"] = {"discord": {"tokenSecretRef": {"name": "discord", "key": "token"}}}
    assert apply(control_plane, namespace, body).returncode == 0
    wait_phase(control_plane, namespace, "helpdesk")
    # As an older release left it (the ChatBot's own, one key shared by every bot): the
    # keys written since are taken out.
    secret = core.read_namespaced_secret("helpdesk-api-keys", namespace)
    admin = secret.data["admin"]
    secret.data = {"admin": admin, "bots": base64.b64encode(b"old-shared-key").decode()}
    core.replace_namespaced_secret("helpdesk-api-keys", namespace, secret)

    expected = {"bots", "admin", "web", "slack", "discord", "telegram"}
    data = eventually(
        lambda: (
            (found := core.read_namespaced_secret("helpdesk-api-keys", namespace).data)
            and set(found) == expected
            and found
        ),
        60,
        "the keys it lacks added",
    )
    assert data["admin"] == admin
    assert len({data[key] for key in ("web", "slack", "discord", "telegram")}) == 4
    updated = [e for e in events(control_plane, namespace, "helpdesk") if e.reason == "Updated"]
    assert len(updated) == 1 and "discord" in updated[0].message
    assert "old-" not in updated[0].message
