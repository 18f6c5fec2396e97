"""The model autoscaler against the real control plane: with the rights the operator grants
its gateway (a bound ServiceAccount token, nothing more), a request held at zero replicas
scales the model up through the ChatBot's scale subresource, the load scales it to its
maximum and, idle, back to zero; the operator follows each move with the model's pods, and
the ChatBot's status says why it has the replicas it has. The same token cannot scale
another ChatBot. (The real node's tier holds the whole path: tests/cluster.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tertulia.gateway.autoscale import Autoscaler, ScaleFailed, ScaleTarget
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.routing import Router
from tertulia.gateway.settings import AutoscalingSettings, KubernetesSettings
from tertulia.gateway.store import InProcessStore
from tests.e2e.test_operator import (
    EXAMPLE_SECRETS,
    READY_TIMEOUT,
    Operator,
    apply,
    chatbot,
    condition,
    create_secrets,
    fresh_namespace,
    kubectl,
    load_example,
    operator,  # noqa: F401 - the module's operator, a fixture
    wait_phase,
)
from tests.testbed.kube import ControlPlane

BOT = "harbour"


@pytest.fixture
def namespace(control_plane: ControlPlane, operator: Operator) -> Iterator[str]:  # noqa: F811
    with fresh_namespace(control_plane, "scale") as name:
        yield name


async def until(check: Callable[[], Any], what: str, seconds: float = READY_TIMEOUT) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := check():
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def gateway_access(control_plane: ControlPlane, namespace: str, tmp: Path) -> KubernetesSettings:
    """What the gateway's pod is given: a token of its ServiceAccount, the cluster's CA."""
    token = (
        client.CoreV1Api(control_plane.api_client())
        .create_namespaced_service_account_token(
            f"{BOT}-gateway", namespace, {"spec": {"expirationSeconds": 3600}}
        )
        .status.token
    )
    (tmp / "token").write_text(token)
    return KubernetesSettings(
        api_url=control_plane.server,
        token_file=tmp / "token",
        ca_file=control_plane.pki.ca_cert,
    )


def model_pods(control_plane: ControlPlane, namespace: str, ready: bool = False) -> list[Any]:
    body = chatbot(control_plane, namespace, BOT)
    selector = body.get("status", {}).get("model", {}).get("selector")
    if not selector:
        return []
    pods = client.CoreV1Api(control_plane.api_client()).list_namespaced_pod(
        namespace, label_selector=selector
    )
    return [
        pod
        for pod in pods.items
        if pod.metadata.deletion_timestamp is None
        and (
            not ready
            or any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        )
    ]


async def test_the_gateway_scales_the_model_from_zero_to_its_maximum_and_back_by_the_scale_subresource(  # noqa: E501
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    create_secrets(control_plane, namespace, EXAMPLE_SECRETS["vllm-gpu-slack-kb"])
    body = load_example("vllm-gpu-slack-kb")
    body["spec"]["knowledgeBase"]["sources"] = []
    body["spec"]["model"]["replicas"] = 0
    body["spec"]["model"]["autoscaling"] = {
        "minReplicas": 0,
        "maxReplicas": 3,
        "targetInFlight": 2,
        "scaleDownDelaySeconds": 0,
    }
    assert apply(control_plane, namespace, body).returncode == 0
    idle = wait_phase(control_plane, namespace, BOT)
    # Scaled to zero is a healthy state when the model autoscales.
    model = condition(idle, "ModelReady")
    assert (model["status"], model["reason"]) == ("True", "ScaledToZero"), model
    assert model_pods(control_plane, namespace) == []

    access = gateway_access(control_plane, namespace, tmp_path)
    settings = AutoscalingSettings(
        enabled=True,
        chatbot=BOT,
        namespace=namespace,
        min_replicas=0,
        max_replicas=3,
        target_in_flight=2,
        scale_down_delay_seconds=0,
        queue_timeout_seconds=READY_TIMEOUT,
        kubernetes=access,
    )
    router = Router(f"http://{BOT}-model.{namespace}.svc:8000/v1")
    scaler = Autoscaler(
        settings, router, InProcessStore(), GatewayMetrics.create(), member="gateway-0"
    )
    try:
        # A request arrives at zero replicas: held, and the model woken.
        held = asyncio.create_task(scaler.hold())
        woken = await until(
            lambda: chatbot(control_plane, namespace, BOT)["spec"]["model"]["replicas"] == 1,
            "the held request to scale the model to 1",
            seconds=30,
        )
        assert woken and not held.done()
        # The operator follows the scale subresource with a model pod; once it is ready (the
        # headless Service's DNS would list it: here the test tells the router), the request
        # goes on.
        (pod,) = await until(
            lambda: model_pods(control_plane, namespace, ready=True), "a ready model pod"
        )
        router.update([f"http://{pod.status.pod_ip}:8000/v1"])
        await asyncio.wait_for(held, 5)
        status = chatbot(control_plane, namespace, BOT)["status"]["autoscaling"]
        assert status["desiredReplicas"] == 1
        assert "a request arrived while the model had no replica" in status["reason"]

        # Seven requests in flight at two per replica would need four: capped at three.
        replica = router.replicas[0]
        for _ in range(7):
            router.acquire(replica)
        decision = await scaler.tick()
        assert decision is not None and decision.replicas == 3
        await until(
            lambda: len(model_pods(control_plane, namespace, ready=True)) == 3,
            "three ready model pods",
        )
        found = chatbot(control_plane, namespace, BOT)
        assert found["spec"]["model"]["replicas"] == 3
        assert "capped at the maximum, 3" in found["status"]["autoscaling"]["reason"]
        # The READY column follows once the operator has seen the pods.
        await until(
            lambda: (
                kubectl(
                    control_plane, "get", "chatbot", BOT, "-n", namespace, "--no-headers"
                ).stdout.split()[3]
                == "3"
            ),
            "the READY column to say 3",
        )

        # Idle again (no delay here): back to zero, and the pods go.
        for _ in range(7):
            router.release(replica)
        router.update([])
        decision = await scaler.tick()
        assert decision is not None and decision.replicas == 0
        await until(lambda: not model_pods(control_plane, namespace), "no model pods")
        found = chatbot(control_plane, namespace, BOT)
        assert found["spec"]["model"]["replicas"] == 0
        assert "no requests for 0 s" in found["status"]["autoscaling"]["reason"]
        assert scaler.metrics.scale_events.labels("wake")._value.get() == 1
        assert scaler.metrics.scale_events.labels("up")._value.get() == 1
        assert scaler.metrics.scale_events.labels("down")._value.get() == 1

        # The token moves this ChatBot's scale and no other's.
        other = ScaleTarget("another-bot", namespace, access)
        try:
            with pytest.raises(ScaleFailed) as refused:
                await other.scale(1)
            assert refused.value.status == 403
        finally:
            await other.aclose()
    finally:
        await scaler.aclose()
