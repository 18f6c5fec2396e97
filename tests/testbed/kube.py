"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and kwok managing fake CPU and GPU nodes on which Pods become Running and Ready.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.testbed.paths import binary
from tests.testbed.pki import Pki, write_pki
from tests.testbed.process import ManagedProcess, eventually, free_port

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"


@dataclass(frozen=True)
class FakeNode:
    """A node that kwok keeps Ready; GPU nodes carry the taint and labels of real GPU pools."""

    name: str
    cpu: str
    memory: str
    gpus: int = 0
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    labels: dict[str, str] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        capacity = {"cpu": self.cpu, "memory": self.memory, "pods": "110"}
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            **self.labels,
        }
        taints = []
        if self.gpus:
            capacity[GPU_RESOURCE] = str(self.gpus)
            labels[GPU_PRODUCT_LABEL] = self.gpu_product
            labels["nvidia.com/gpu.present"] = "true"
            # The taint GPU pools carry in managed clusters; ExtendedResourceToleration
            # admission adds the matching toleration to any Pod that requests GPUs.
            taints.append({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {KWOK_ANNOTATION: "fake"},
            },
            "spec": {"taints": taints},
            "status": {"capacity": capacity, "allocatable": capacity},
        }


DEFAULT_STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {
        "name": "standard",
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
    },
    "provisioner": "kubernetes.io/host-path",
    "volumeBindingMode": "Immediate",
}

DEFAULT_NODES = (
    FakeNode("cpu-node-0", cpu="16", memory="64Gi"),
    FakeNode("cpu-node-1", cpu="16", memory="64Gi"),
    FakeNode("gpu-node-0", cpu="64", memory="512Gi", gpus=8),
    FakeNode("gpu-node-1", cpu="64", memory="512Gi", gpus=8),
)


class ControlPlane:
    """Starts and stops the whole control plane; `kubeconfig` is the admin's."""

    def __init__(
        self,
        workdir: Path,
        nodes: tuple[FakeNode, ...] = DEFAULT_NODES,
        *,
        survive_parent: bool = False,
    ) -> None:
        self.workdir = workdir
        self.nodes = nodes
        self.survive_parent = survive_parent
        self.kubeconfig = workdir / "kubeconfig"
        self.logs = workdir / "logs"
        self.processes: list[ManagedProcess] = []
        self.apiserver_port = 0
        self._pki: Pki | None = None

    def client_env(self) -> dict[str, str]:
        """Environment for kubectl and helm as the admin, their caches kept in the workdir."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "HOME": str(self.workdir),
            "PATH": "/usr/bin:/bin",
        }

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount with a bound token, so a
        process using it has exactly the RBAC that account is granted."""
        from kubernetes import client

        token = (
            client.CoreV1Api(self.api_client())
            .create_namespaced_service_account_token(
                name, namespace, {"spec": {"expirationSeconds": 3600}}
            )
            .status.token
        )
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"] = [{"name": name, "user": {"token": token}}]
        config["contexts"] = [{"name": name, "context": {"cluster": "testbed", "user": name}}]
        config["current-context"] = name
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def pki(self) -> Pki:
        if self._pki is None:
            raise RuntimeError("the control plane has not been started")
        return self._pki

    def start(self, timeout: float = 180.0) -> ControlPlane:
        try:
            self._pki = write_pki(self.workdir / "pki")
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._write_kubeconfig()
            self._start("kube-controller-manager", self._controller_manager_args())
            self._start("kube-scheduler", self._scheduler_args())
            self._start_kwok()
            self._register_nodes(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- the parts, in start order ---

    def _start(self, name: str, args: list[str]) -> ManagedProcess:
        process = ManagedProcess(
            name, [str(binary(name)), *args], self.logs, survive_parent=self.survive_parent
        ).start()
        self.processes.append(process)
        return process

    def _start_etcd(self, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        etcd = self._start(
            "etcd",
            [
                "--name=testbed",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=testbed=http://127.0.0.1:{peer}",
                # The data dies with the run: durability buys nothing and costs seconds.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        etcd.wait_until(
            lambda: (
                json.loads(urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2).read())[
                    "health"
                ]
                == "true"
            ),
            timeout,
            "healthy",
        )

    def _start_apiserver(self, timeout: float) -> None:
        self.apiserver_port = free_port()
        issuer = "https://kubernetes.default.svc.cluster.local"
        apiserver = self._start(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.workdir / 'apiserver'}",
                f"--tls-cert-file={self.pki.serving_cert}",
                f"--tls-private-key-file={self.pki.serving_key}",
                f"--client-ca-file={self.pki.ca_cert}",
                f"--service-account-issuer={issuer}",
                f"--api-audiences={issuer}",
                f"--service-account-key-file={self.pki.service_account_public_key}",
                f"--service-account-signing-key-file={self.pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=RBAC",
                "--enable-admission-plugins=ExtendedResourceToleration",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        context = self._ssl_context()
        apiserver.wait_until(
            lambda: (
                urllib.request.urlopen(f"{self.server}/readyz", timeout=2, context=context)
                .read()
                .strip()
                == b"ok"
            ),
            timeout,
            "ready",
        )

    def _controller_manager_args(self) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--use-service-account-credentials=false",
            # Binds PersistentVolumeClaims of the `standard` class to hostPath volumes, so
            # Pods with volumes schedule as on a cluster with a storage provisioner.
            "--enable-hostpath-provisioner=true",
        ]

    def _scheduler_args(self) -> list[str]:
        return [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--secure-port=0"]

    def _start_kwok(self) -> None:
        self._start(
            "kwok",
            [
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.0.0.1",
                # Leases keep the node-lifecycle controller from tainting the fake nodes.
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )

    def _register_nodes(self, timeout: float) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = client.CoreV1Api(self.api_client())
        client.StorageV1Api(self.api_client()).create_storage_class(DEFAULT_STORAGE_CLASS)
        for node in self.nodes:
            try:
                api.create_node(node.manifest())
            except ApiException as error:
                if error.status != 409:
                    raise

        def all_ready() -> bool:
            ready = {
                item.metadata.name
                for item in api.list_node().items
                if any(
                    c.type == "Ready" and c.status == "True" for c in item.status.conditions or []
                )
            }
            service_accounts = api.list_namespaced_service_account("default").items
            return ready >= {node.name for node in self.nodes} and any(
                sa.metadata.name == "default" for sa in service_accounts
            )

        kwok = next(p for p in self.processes if p.name == "kwok")
        kwok.wait_until(all_ready, timeout, "managing Ready nodes")

    # --- clients ---

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testbed",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.pki.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": "testbed-admin",
                    "user": {
                        "client-certificate": str(self.pki.admin_cert),
                        "client-key": str(self.pki.admin_key),
                    },
                }
            ],
            "contexts": [
                {"name": "testbed", "context": {"cluster": "testbed", "user": "testbed-admin"}}
            ],
            "current-context": "testbed",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def api_client(self) -> Any:
        """A kubernetes-client ApiClient logged in as the test bed's admin."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def install_crd(self, body: dict[str, Any], timeout: float = 30.0) -> None:
        """Create a CustomResourceDefinition and wait until the API server serves it."""
        from kubernetes import client

        api = client.ApiextensionsV1Api(self.api_client())
        try:
            api.create_custom_resource_definition(body)
        except client.ApiException as error:
            if error.status != 409:  # already there, from the chart or an earlier test
                raise
        eventually(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in api.read_custom_resource_definition(
                    body["metadata"]["name"]
                ).status.conditions
                or []
            ),
            timeout,
            f"CRD {body['metadata']['name']} to be established",
        )

    def resident_memory_mib(self) -> dict[str, float]:
        """Resident memory of each control-plane process, in MiB."""
        return {process.name: process.memory_mib()[0] for process in self.processes}
