"""The test bed's control plane is real: Pods are scheduled by resources, GPUs included,
kwok makes them Ready, and garbage collection follows owner references.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.testbed.kube import GPU_RESOURCE, ControlPlane
from tests.testbed.paths import binary, versions
from tests.testbed.process import eventually


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    core = client.CoreV1Api(control_plane.api_client())
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    eventually(
        lambda: any(
            sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items
        ),
        what="the default ServiceAccount",
    )
    yield name
    core.delete_namespace(name)


def deployment(name: str, replicas: int = 1, gpus: int = 0) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": "100m", "memory": "64Mi"}}
    if gpus:
        resources["limits"] = {GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.invalid/model:1",
                            "resources": resources,
                        }
                    ]
                },
            },
        },
    }


def pods_of(core: client.CoreV1Api, namespace: str, app: str) -> list[Any]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"app={app}").items)


def is_ready(pod: Any) -> bool:
    conditions = pod.status.conditions or []
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in conditions
    )


def test_gpu_pod_is_scheduled_on_a_gpu_node_and_becomes_ready(
    control_plane: ControlPlane, namespace: str
) -> None:
    api = control_plane.api_client()
    core = client.CoreV1Api(api)
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("model", gpus=1))

    pods = eventually(
        lambda: [p for p in pods_of(core, namespace, "model") if is_ready(p)],
        what="a Ready model Pod",
    )
    node = core.read_node(pods[0].spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert node.status.allocatable[GPU_RESOURCE] == "8"
    # ExtendedResourceToleration admission let it past the GPU nodes' taint.
    assert any(t.key == GPU_RESOURCE for t in pods[0].spec.tolerations)


def test_cpu_pod_stays_off_the_tainted_gpu_nodes(
    control_plane: ControlPlane, namespace: str
) -> None:
    api = control_plane.api_client()
    core = client.CoreV1Api(api)
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("web", replicas=4))

    pods = eventually(
        lambda: (
            (ready := [p for p in pods_of(core, namespace, "web") if is_ready(p)])
            and len(ready) == 4
            and ready
        ),
        what="4 Ready web Pods",
    )
    assert {pod.spec.node_name for pod in pods} <= {"cpu-node-0", "cpu-node-1"}


def test_pod_asking_more_gpus_than_any_node_has_stays_pending(
    control_plane: ControlPlane, namespace: str
) -> None:
    api = control_plane.api_client()
    core = client.CoreV1Api(api)
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("huge", gpus=9))

    def failed_scheduling() -> list[Any]:
        return [
            event
            for event in core.list_namespaced_event(namespace).items
            if event.reason == "FailedScheduling" and event.involved_object.kind == "Pod"
        ]

    events = eventually(failed_scheduling, what="a FailedScheduling event")
    assert f"Insufficient {GPU_RESOURCE}" in events[0].message
    (pod,) = pods_of(core, namespace, "huge")
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None


def test_deleting_a_deployment_garbage_collects_its_pods(
    control_plane: ControlPlane, namespace: str
) -> None:
    api = control_plane.api_client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("doomed", replicas=2))
    eventually(
        lambda: len([p for p in pods_of(core, namespace, "doomed") if is_ready(p)]) == 2,
        what="2 Ready Pods",
    )

    apps.delete_namespaced_deployment("doomed", namespace, propagation_policy="Background")

    eventually(lambda: not pods_of(core, namespace, "doomed"), what="the Pods to be collected")
    assert not apps.list_namespaced_replica_set(namespace, label_selector="app=doomed").items


def test_a_claim_of_the_default_class_is_bound(control_plane: ControlPlane, namespace: str) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    claim = {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    core.create_namespaced_persistent_volume_claim(namespace, claim)

    eventually(
        lambda: (
            core.read_namespaced_persistent_volume_claim("data", namespace).status.phase == "Bound"
        ),
        what="the claim to be Bound",
    )


def test_kubectl_and_helm_reach_the_api_server(control_plane: ControlPlane) -> None:
    env = control_plane.client_env()
    kubectl = subprocess.run(
        [binary("kubectl"), "version", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        json.loads(kubectl.stdout)["serverVersion"]["gitVersion"]
        == versions()["KUBERNETES_VERSION"]
    )

    helm_version = subprocess.run(
        [binary("helm"), "version", "--short"], env=env, capture_output=True, text=True, check=True
    )
    assert helm_version.stdout.startswith("v4.")
    helm_list = subprocess.run(
        [binary("helm"), "list", "--all-namespaces", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    # Succeeding at all proves helm reached the server: it reads release Secrets there.
    assert isinstance(json.loads(helm_list.stdout), list)
