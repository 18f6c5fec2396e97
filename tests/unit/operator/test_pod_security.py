"""Every pod the operator renders meets the restricted Pod Security profile, model servers
included, and every emptyDir is bounded. (The e2e tier shows the API server's own Pod
Security admission taking them in a namespace that enforces the profile.)"""

from __future__ import annotations

from typing import Any

import pytest

from tertulia.operator.api import ChatBot
from tertulia.operator.render import render_all
from tests.unit.operator.test_render import EXAMPLES, IMAGE, load, with_spec

# The volume types the restricted profile allows (kubernetes.io/docs/concepts/security/
# pod-security-standards, "Volume Types").
ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def pods(bot: ChatBot) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec the ChatBot's workloads would create, by workload name."""
    found = []
    for manifest in render_all(bot, image=IMAGE):
        spec = manifest.get("spec") or {}
        if manifest["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        template = spec.get("template")
        if template is not None:
            found.append((manifest["metadata"]["name"], template["spec"]))
    return found


def violations(pod: dict[str, Any]) -> list[str]:
    """What of the restricted profile a pod breaks, in the profile's own terms."""
    found = []
    pod_context = pod.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            found.append(host)
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            found.append(f"volume {volume['name']}: {kinds}")
        if "emptyDir" in volume and "sizeLimit" not in (volume["emptyDir"] or {}):
            found.append(f"emptyDir {volume['name']} without a sizeLimit")
    for container in [*(pod.get("initContainers") or []), *pod["containers"]]:
        name = container["name"]
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities not dropped")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added")
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        if non_root is not True:
            found.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"{name}: runs as UID 0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get(
            "type"
        )
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: no seccomp profile")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            found.append(f"{name}: hostPort")
    return found


VARIANTS = {
    "ollama": {"model": {"engine": "ollama", "name": "llama3.2:3b"}},
    "llamacpp from the hub": {
        "model": {"engine": "llamacpp", "source": "hf://owner/repo/model.gguf"}
    },
    "llamacpp on GPUs from a claim": {
        "model": {"engine": "llamacpp", "gpus": 1, "source": "pvc://weights/model.gguf"}
    },
    "vllm with a cache per replica": {
        "model": {"engine": "vllm", "name": "Qwen/Qwen2.5-7B-Instruct", "cache": {"size": "20Gi"}}
    },
    "redis on an emptyDir with sentinels": {
        "model": {"engine": "ollama", "name": "m"},
        "gateway": {"memory": {"replicas": 3}},
    },
    "redis on an emptyDir": {
        "model": {"engine": "ollama", "name": "m"},
        "gateway": {"memory": {"persistent": False}},
    },
    "a knowledge base with backups": {
        "model": {"engine": "ollama", "name": "m"},
        "knowledgeBase": {"enabled": True, "backup": {"schedule": "0 3 * * *"}},
    },
}


def bots() -> list[tuple[str, ChatBot]]:
    found = [(path.stem, load(path)) for path in EXAMPLES]
    base = load(next(path for path in EXAMPLES if path.stem == "cpu-ollama"))
    found += [(name, with_spec(base, spec)) for name, spec in VARIANTS.items()]
    return found


@pytest.mark.parametrize(("name", "bot"), bots(), ids=[name for name, _ in bots()])
def test_every_pod_meets_the_restricted_profile_with_bounded_scratch_space(
    name: str, bot: ChatBot
) -> None:
    rendered = pods(bot)
    assert rendered
    broken = {workload: found for workload, pod in rendered if (found := violations(pod))}
    assert not broken, broken
