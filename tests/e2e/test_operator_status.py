"""A status that explains, against the real control plane and scheduler: a pod that cannot
be scheduled (too few GPUs, or a taint it does not tolerate), and a claim that cannot be
bound, show in the component's condition with the cluster's own words, in `kubectl get`'s
REASON column and as a Warning Event; fixing the spec clears them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

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
    kubectl,
    load_example,
    operator,  # noqa: F401 - the module's operator, a fixture
    wait_phase,
)
from tests.testbed.kube import ControlPlane
from tests.testbed.process import eventually


@pytest.fixture
def namespace(control_plane: ControlPlane, operator: Operator) -> Iterator[str]:  # noqa: F811
    with fresh_namespace(control_plane, "why") as name:
        yield name


def condition_turns(
    control_plane: ControlPlane,
    namespace: str,
    name: str,
    kind: str,
    reason: str,
    saying: str = "",
) -> dict[str, Any]:
    """The condition once its reason is `reason` and its message holds `saying`: the cluster's
    words change as it goes (a replica's claim is bound a moment after its pod is made, and
    the scheduler says so before it finds the GPUs short)."""

    def found() -> dict[str, Any] | None:
        body = chatbot(control_plane, namespace, name)
        if not (body.get("status") or {}).get("conditions"):
            return None
        now = condition(body, kind)
        return now if now["reason"] == reason and saying in now["message"] else None

    said: dict[str, Any] = eventually(
        found, timeout=READY_TIMEOUT, what=f"{kind} to say {reason}: {saying}"
    )
    return said


def gpu_chatbot(
    control_plane: ControlPlane, namespace: str, *, gpus: int, replicas: int
) -> dict[str, Any]:
    """The vLLM example without documents, its Secrets created, its model sized as asked."""
    create_secrets(control_plane, namespace, EXAMPLE_SECRETS["vllm-gpu-slack-kb"])
    body = load_example("vllm-gpu-slack-kb")
    body["spec"]["knowledgeBase"]["sources"] = []
    body["spec"]["model"].update(gpus=gpus, replicas=replicas)
    return body


def give_back_gpus(control_plane: ControlPlane, namespace: str) -> None:
    """Delete the ChatBot and wait for its pods: a namespace is deleted in the background,
    and the next test may want the GPUs."""
    kubectl(control_plane, "delete", "chatbot", "harbour", "-n", namespace, "--wait=true")
    core = client.CoreV1Api(control_plane.api_client())
    eventually(
        lambda: not core.list_namespaced_pod(namespace).items,
        timeout=READY_TIMEOUT,
        what="the model pods to be gone",
    )


def test_a_model_no_node_can_hold_says_what_the_scheduler_said(
    control_plane: ControlPlane, namespace: str
) -> None:
    # Three replicas of 8 GPUs: the test bed has two GPU nodes of 8.
    body = gpu_chatbot(control_plane, namespace, gpus=8, replicas=3)
    assert apply(control_plane, namespace, body).returncode == 0

    # Until its claim is bound, the third replica's pod is refused for that ("pod has unbound
    # immediate PersistentVolumeClaims"), which the status says too; then for the GPUs.
    said = condition_turns(
        control_plane, namespace, "harbour", "ModelReady", "Unschedulable",
        saying="Insufficient nvidia.com/gpu",
    )  # fmt: skip

    assert re.match(
        r"\d/3 model server replicas Ready: pod harbour-model-\d cannot be scheduled: ",
        said["message"],
    )
    row = kubectl(control_plane, "get", "chatbot", "harbour", "-n", namespace, "--no-headers")
    assert row.stdout.split()[6] == "Unschedulable", "the REASON column"
    # Other Warnings may come first (an Event per condition that turns, and the other pods'
    # own: the memory pod waits for its volume's claim; a model pod may first wait for its
    # own claim): wait for the one that says the GPUs are short.
    warned = eventually(
        lambda: [
            e
            for e in events(control_plane, namespace, "harbour")
            if e.type == "Warning"
            and e.reason == "Unschedulable"
            and e.message.startswith("pod harbour-model-")
            and "Insufficient nvidia.com/gpu" in e.message
        ],
        what="an Unschedulable Warning Event about a model pod short of GPUs",
    )
    assert warned

    body["spec"]["model"].update(gpus=2, replicas=1)
    assert apply(control_plane, namespace, body).returncode == 0
    ready = wait_phase(control_plane, namespace, "harbour")
    assert condition(ready, "ModelReady")["reason"] == "Ready"
    give_back_gpus(control_plane, namespace)


def test_a_model_whose_nodes_are_tainted_names_the_taint_until_it_tolerates_it(
    control_plane: ControlPlane, namespace: str
) -> None:
    body = gpu_chatbot(control_plane, namespace, gpus=1, replicas=1)
    gpu_nodes = ["gpu-node-0", "gpu-node-1"]
    taint = "tertulia.dev/reserved=training:NoSchedule"
    for node in gpu_nodes:
        assert kubectl(control_plane, "taint", "node", node, taint).returncode == 0
    try:
        assert apply(control_plane, namespace, body).returncode == 0

        said = condition_turns(
            control_plane, namespace, "harbour", "ModelReady", "Unschedulable",
            saying="2 node(s) had untolerated taint(s)",
        )  # fmt: skip

        assert "pod harbour-model-0 cannot be scheduled: " in said["message"]
        tolerations = body["spec"]["model"].setdefault("tolerations", [])
        tolerations.append(
            {"key": "tertulia.dev/reserved", "value": "training", "effect": "NoSchedule"}
        )
        assert apply(control_plane, namespace, body).returncode == 0
        ready = wait_phase(control_plane, namespace, "harbour")
        assert condition(ready, "ModelReady")["reason"] == "Ready"
    finally:
        for node in gpu_nodes:
            kubectl(control_plane, "taint", "node", node, "tertulia.dev/reserved-")
    give_back_gpus(control_plane, namespace)


def test_a_knowledge_base_whose_claim_cannot_be_bound_names_the_claim_and_its_class(
    control_plane: ControlPlane, namespace: str
) -> None:
    body = load_example("cpu-ollama")
    body["spec"]["knowledgeBase"] = {
        "enabled": True,
        "storage": "1Gi",
        "storageClassName": "no-such-class",
    }
    assert apply(control_plane, namespace, body).returncode == 0

    said = condition_turns(
        control_plane, namespace, "helpdesk", "KnowledgeBaseReady", "ClaimNotBound"
    )

    assert "PersistentVolumeClaim data-helpdesk-knowledge-base-0" in said["message"]
    assert "storage class 'no-such-class'" in said["message"]
    assert chatbot(control_plane, namespace, "helpdesk")["status"]["phase"] == "Progressing"
