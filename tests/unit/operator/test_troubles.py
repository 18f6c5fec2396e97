"""Why a ChatBot's pods cannot run, in the words the cluster uses, carried into its status:
pods as the scheduler and the kubelet write them."""

from __future__ import annotations

from typing import Any

from tertulia.operator.api import ChatBotStatus
from tertulia.operator.seen import Seen
from tertulia.operator.status import (
    LAST_WORDS,
    Trouble,
    Workload,
    compute_status,
    pod_trouble,
)
from tests.unit.operator.test_render import example

UNSCHEDULABLE_GPU = (
    "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint "
    "{nvidia.com/gpu: present}. preemption: 0/4 nodes are available: 2 No preemption victims "
    "found for incoming pod, 2 Preemption is not helpful for scheduling."
)
UNBOUND_CLAIMS = (
    "0/4 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: "
    "0/4 nodes are available: 4 Preemption is not helpful for scheduling."
)


def pod(
    name: str,
    component: str,
    *,
    conditions: list[dict[str, Any]] | None = None,
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "namespace": "bots",
            "name": name,
            "labels": {
                "app.kubernetes.io/instance": "helpdesk",
                "app.kubernetes.io/component": component,
            },
        },
        "status": {
            "phase": "Pending",
            "conditions": conditions or [],
            "containerStatuses": containers or [],
        },
    }


def unschedulable(name: str, component: str, message: str) -> dict[str, Any]:
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
    }
    return pod(name, component, conditions=[condition])


def crash_looping(name: str, said: str) -> dict[str, Any]:
    return pod(
        name,
        "gateway",
        containers=[
            {
                "name": "gateway",
                "image": "ghcr.io/tertulia/tertulia:1.0.0",
                "ready": False,
                "restartCount": 4,
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": "back-off 1m20s restarting failed container=gateway",
                    }
                },
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": said}},
            }
        ],
    )


def test_an_unschedulable_pod_says_what_the_scheduler_said() -> None:
    found = pod_trouble(unschedulable("helpdesk-model-0", "model", UNSCHEDULABLE_GPU))
    assert found is not None
    assert found.reason == "Unschedulable"
    assert "helpdesk-model-0" in found.message
    assert "2 Insufficient nvidia.com/gpu" in found.message
    assert "untolerated taint {nvidia.com/gpu: present}" in found.message


def test_a_claim_kept_on_a_node_that_cannot_take_its_pod_says_what_to_do() -> None:
    # A ChatBot created again takes back the claims it kept (retainDataOnDelete); a local
    # volume stays on its node, and that node may be full or gone.
    said = (
        "0/3 nodes are available: 1 node(s) had volume node affinity conflict, 2 node(s) had "
        "untolerated taint {node.kubernetes.io/unschedulable: }. preemption: 0/3 nodes are "
        "available: 3 Preemption is not helpful for scheduling."
    )
    found = pod_trouble(unschedulable("helpdesk-knowledge-base-0", "knowledge-base", said))
    assert found is not None
    assert found.message.startswith(f"pod helpdesk-knowledge-base-0 cannot be scheduled: {said}")
    assert "retainDataOnDelete" in found.message
    assert "delete the claim" in found.message


def test_a_claim_the_scheduler_has_not_seen_yet_is_no_trouble() -> None:
    # A StatefulSet makes a pod's claim just before the pod; for a moment the scheduler's
    # cache lacks it and it says so. It tries again by itself: not a reason to warn anyone.
    said = (
        '0/4 nodes are available: persistentvolumeclaim "cache-helpdesk-model-0" not found. '
        "not found"
    )
    assert pod_trouble(unschedulable("helpdesk-model-0", "model", said)) is None


def test_an_image_that_cannot_be_pulled_is_named() -> None:
    waiting = {
        "reason": "ImagePullBackOff",
        "message": 'Back-off pulling image "vllm/vllm-openai:v9.9.9": ErrImagePull: '
        'failed to pull and unpack image "docker.io/vllm/vllm-openai:v9.9.9": not found',
    }
    found = pod_trouble(
        pod(
            "helpdesk-model-0",
            "model",
            containers=[
                {"name": "vllm", "image": "vllm/vllm-openai:v9.9.9", "state": {"waiting": waiting}}
            ],
        )
    )
    assert found is not None
    assert found.reason == "ImagePullFailed"
    assert "cannot pull vllm/vllm-openai:v9.9.9" in found.message
    assert "not found" in found.message


def test_a_crash_loop_carries_the_exit_and_only_the_last_log_line() -> None:
    said = (
        "starting gateway\nTraceback (most recent call last):\nValueError: backend.url is unset\n"
    )
    found = pod_trouble(crash_looping("helpdesk-gateway-7d9", said))
    assert found is not None
    assert found.reason == "CrashLoopBackOff"
    assert "container gateway of pod helpdesk-gateway-7d9 keeps exiting" in found.message
    assert "exit code 1, Error" in found.message
    assert found.message.endswith("ValueError: backend.url is unset")
    assert "Traceback" not in found.message


def test_a_crash_loops_last_line_reaches_the_status_without_its_token() -> None:
    said = (
        "telegram.error.InvalidToken: GET https://api.telegram.org/"
        "bot7000000001:AAFakeTelegramTokenForTheTestBed000000/getMe returned 401\n"
    )
    found = pod_trouble(crash_looping("helpdesk-telegram-5c4", said))
    assert found is not None
    assert "AAFakeTelegram" not in found.message
    assert "bot7000000001:[redacted]/getMe returned 401" in found.message


def test_a_long_last_line_is_cut() -> None:
    found = pod_trouble(crash_looping("p", "x" * 5000))
    assert found is not None
    assert len(found.message) < LAST_WORDS + 120
    assert found.message.endswith("…")


def test_a_pod_starting_or_running_has_no_trouble() -> None:
    scheduled = {"type": "PodScheduled", "status": "True"}
    creating = {"name": "gateway", "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert pod_trouble(pod("a", "gateway", conditions=[scheduled], containers=[creating])) is None
    running = {"name": "gateway", "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}}}
    assert pod_trouble(pod("b", "gateway", conditions=[scheduled], containers=[running])) is None


def test_the_status_says_why_in_the_component_s_condition_and_in_ready() -> None:
    bot = example("cpu-ollama")
    workloads = {
        "model": Workload(1, 0),
        "gateway": Workload(1, 1),
        "memory": Workload(1, 1),
    }
    trouble = Trouble("Unschedulable", f"pod m-0 cannot be scheduled: {UNSCHEDULABLE_GPU}")
    status = compute_status(bot, workloads, [], ChatBotStatus(), troubles={"model": [trouble]})
    conditions = {c.type: c for c in status.conditions}
    assert conditions["ModelReady"].reason == "Unschedulable"
    assert conditions["ModelReady"].message.startswith("0/1 model server replicas Ready: pod m-0")
    assert "Insufficient nvidia.com/gpu" in conditions["ModelReady"].message
    # `kubectl get chatbots` shows Ready's reason: the first unready component's.
    assert conditions["Ready"].reason == "Unschedulable"
    assert status.phase == "Progressing"


def test_a_pod_held_for_its_claims_names_the_unbound_claim_and_its_class() -> None:
    bot = example("cpu-ollama")
    seen = Seen()
    seen.saw(unschedulable("helpdesk-knowledge-base-0", "knowledge-base", UNBOUND_CLAIMS))
    seen.saw(
        {
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "namespace": "bots",
                "name": "data-helpdesk-knowledge-base-0",
                "labels": {
                    "app.kubernetes.io/instance": "helpdesk",
                    "app.kubernetes.io/component": "knowledge-base",
                },
            },
            "spec": {"storageClassName": "fast-ssd"},
            "status": {"phase": "Pending"},
        }
    )
    (found,) = seen.observed(bot).troubles["knowledge-base"]
    assert found.reason == "ClaimNotBound"
    assert "PersistentVolumeClaim data-helpdesk-knowledge-base-0" in found.message
    assert "storage class 'fast-ssd'" in found.message


def test_a_trouble_that_clears_clears_from_the_status_and_is_announced_once() -> None:
    bot = example("cpu-ollama")
    seen = Seen()
    looping = crash_looping("helpdesk-gateway-7d9", "ValueError: backend.url is unset")
    assert seen.saw(looping)
    assert seen.to_announce(looping, deleted=False) is not None
    assert seen.observed(bot).troubles["gateway"][0].reason == "CrashLoopBackOff"
    # Between two crashes the container runs: no trouble, and the status has none.
    running = pod("helpdesk-gateway-7d9", "gateway")
    assert seen.saw(running)
    assert seen.observed(bot).troubles == {}
    # It crashes again: the status says so again, but the Event is not repeated.
    assert seen.saw(looping)
    assert seen.to_announce(looping, deleted=False) is None
    # An event that changes nothing of it asks for no status write.
    assert not seen.saw(looping)
