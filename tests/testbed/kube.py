"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and kwok managing fake CPU and GPU nodes on which Pods become Running and Ready.

With `real_node=True` the whole cluster lives in a network namespace of its own, where one real
worker node (`node.py`) runs pods beside the kwok nodes; the API server is then reached from
the host through a forwarder on 127.0.0.1.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.testbed.netns import NODE_IP, NodeNamespace, TcpForwarder
from tests.testbed.node import APISERVER_PORT, NODE_NAME, RealNode, in_node_kubeconfig
from tests.testbed.paths import binary
from tests.testbed.pki import Pki, issue, write_kubeconfig, write_pki
from tests.testbed.process import ManagedProcess, eventually, free_port
from tests.testbed.volumes import LocalVolumeProvisioner, storage_class

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
    pods: int = 110

    def manifest(self) -> dict[str, Any]:
        capacity = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.pods)}
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

# The API server records every request a ServiceAccount makes (who, verb, resource, answer;
# no bodies), so a test can compare what an account did with what it is granted.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}

DEFAULT_NODES = (
    FakeNode("cpu-node-0", cpu="16", memory="64Gi"),
    FakeNode("cpu-node-1", cpu="16", memory="64Gi"),
    FakeNode("gpu-node-0", cpu="64", memory="512Gi", gpus=8),
    FakeNode("gpu-node-1", cpu="64", memory="512Gi", gpus=8),
)
# Beside the real node: GPU nodes alone, tainted as GPU pools are, so every pod that asks no
# GPU runs on the real node (a CPU kwok node would take pods that then never run anything).
REAL_NODE_COMPANIONS = (FakeNode("gpu-node-0", cpu="64", memory="512Gi", gpus=8),)


class ControlPlane:
    """Starts and stops the whole control plane; `kubeconfig` is the admin's."""

    def __init__(
        self,
        workdir: Path,
        nodes: tuple[FakeNode, ...] = DEFAULT_NODES,
        *,
        survive_parent: bool = False,
        real_node: bool = False,
        images: tuple[Path, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.nodes = nodes
        self.survive_parent = survive_parent
        self.kubeconfig = workdir / "kubeconfig"
        self.logs = workdir / "logs"
        self.audit_log = workdir / "audit.log"
        self.processes: list[ManagedProcess] = []
        self.apiserver_port = 0
        self._pki: Pki | None = None
        # With a real node: its namespaces, its daemons, the docker-archives it imports, and
        # the forwarders that reach into its namespace from the host.
        self.real_node = real_node
        self.images = images
        self.namespace: NodeNamespace | None = None
        self.node: RealNode | None = None
        self._forwarders: dict[tuple[str, int], TcpForwarder] = {}
        self._provisioner: LocalVolumeProvisioner | None = None

    def client_env(self) -> dict[str, str]:
        """Environment for kubectl and helm as the admin, their caches kept in the workdir."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "HOME": str(self.workdir),
            "PATH": "/usr/bin:/bin",
        }

    def run_tool(
        self, tool: str, *args: str, stdin: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """kubectl or helm (the test bed's binaries) as the admin, output captured."""
        return subprocess.run(
            [str(binary(tool)), *args],
            input=stdin,
            env=self.client_env(),
            capture_output=True,
            text=True,
            check=check,
        )

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

    def audited(self, username: str) -> list[dict[str, Any]]:
        """The requests a ServiceAccount has made so far, as the audit log holds them (its
        username is `system:serviceaccount:NAMESPACE:NAME`)."""
        if not self.audit_log.exists():
            return []
        events = (json.loads(line) for line in self.audit_log.read_text().splitlines() if line)
        return [event for event in events if event["user"].get("username") == username]

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
            if self.real_node:
                self.namespace = NodeNamespace(self.workdir / "node", self.logs).create(
                    {NODE_NAME: NODE_IP}
                )
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._write_kubeconfig()
            self._start("kube-controller-manager", self._controller_manager_args())
            self._start("kube-scheduler", self._scheduler_args())
            self._start_kwok()
            self._register_nodes(timeout)
            if self.real_node:
                self._start_real_node(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
            self.node = None
        if self._provisioner is not None:
            self._provisioner.stop()
            self._provisioner = None
        # Newest first: the API server outlives what talks to it, etcd outlives the API server.
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        for forwarder in self._forwarders.values():
            forwarder.close()
        self._forwarders.clear()
        if self.namespace is not None:
            self.namespace.delete()
            self.namespace = None

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- the parts, in start order ---

    def _start(self, name: str, args: list[str]) -> ManagedProcess:
        command = [str(binary(name)), *args]
        if self.namespace is not None:
            command = self.namespace.command(command)
        process = ManagedProcess(
            name, command, self.logs, survive_parent=self.survive_parent
        ).start()
        self.processes.append(process)
        return process

    def reachable(self, host: str, port: int) -> tuple[str, int]:
        """An address on the host that reaches `host:port` of the cluster's network: itself,
        or a forwarder into the real node's namespace."""
        if self.namespace is None:
            return host, port
        if (host, port) not in self._forwarders:
            self._forwarders[host, port] = TcpForwarder(self.namespace, (host, port))
        return "127.0.0.1", self._forwarders[host, port].port

    def _start_etcd(self, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        health_host, health_port = self.reachable("127.0.0.1", client)
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
                json.loads(
                    urllib.request.urlopen(
                        f"http://{health_host}:{health_port}/health", timeout=2
                    ).read()
                )["health"]
                == "true"
            ),
            timeout,
            "healthy",
        )

    def _start_apiserver(self, timeout: float) -> None:
        issuer = "https://kubernetes.default.svc.cluster.local"
        if self.real_node:
            # Inside the node's namespace, at the node's address, where the kubelet, pods
            # (through the `kubernetes` Service) and the host's forwarder reach it.
            listen = ["--bind-address=0.0.0.0", f"--advertise-address={NODE_IP}"]
            port = APISERVER_PORT
            kubelet_cert, kubelet_key = issue(
                self.pki, self.pki.ca_cert.parent, "apiserver-kubelet-client",
                "kube-apiserver-kubelet-client", "system:masters",
            )  # fmt: skip
            node_access = [
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=ExtendedResourceToleration,NodeRestriction",
                f"--kubelet-client-certificate={kubelet_cert}",
                f"--kubelet-client-key={kubelet_key}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            port = free_port()
            listen = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"]
            node_access = [
                "--authorization-mode=RBAC",
                "--enable-admission-plugins=ExtendedResourceToleration",
            ]
        self.apiserver_port = self.reachable("127.0.0.1", port)[1]
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(json.dumps(AUDIT_POLICY))
        apiserver = self._start(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                *listen,
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'apiserver'}",
                f"--tls-cert-file={self.pki.serving_cert}",
                f"--tls-private-key-file={self.pki.serving_key}",
                f"--client-ca-file={self.pki.ca_cert}",
                f"--service-account-issuer={issuer}",
                f"--api-audiences={issuer}",
                f"--service-account-key-file={self.pki.service_account_public_key}",
                f"--service-account-signing-key-file={self.pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                *node_access,
                "--allow-privileged=true",
                "--profiling=false",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
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

    @property
    def component_kubeconfig(self) -> Path:
        """The admin kubeconfig as the cluster's own processes use it: inside the node's
        namespace with a real node, the host's otherwise."""
        if not self.real_node:
            return self.kubeconfig
        path = self.workdir / "in-node.kubeconfig"
        if not path.exists():
            in_node_kubeconfig(self.pki, path, self.pki.admin_cert, self.pki.admin_key, "admin")
        return path

    def _controller_manager_args(self) -> list[str]:
        args = [
            f"--kubeconfig={self.component_kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--use-service-account-credentials=false",
        ]
        if not self.real_node:
            # Binds PersistentVolumeClaims of the `standard` class to hostPath volumes, so
            # Pods with volumes schedule as on a cluster with a storage provisioner. A real
            # node has its own provisioner (volumes.py).
            args.append("--enable-hostpath-provisioner=true")
        return args

    def _scheduler_args(self) -> list[str]:
        return [
            f"--kubeconfig={self.component_kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
        ]

    def _start_kwok(self) -> None:
        self._start(
            "kwok",
            [
                f"--kubeconfig={self.component_kubeconfig}",
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
        client.StorageV1Api(self.api_client()).create_storage_class(
            storage_class() if self.real_node else DEFAULT_STORAGE_CLASS
        )
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

    def _start_real_node(self, timeout: float) -> None:
        assert self.namespace is not None
        self.node = RealNode(self.workdir / "node", self.namespace, self.pki, self.logs)
        self.node.start(self.component_kubeconfig, list(self.images), timeout)
        self._provisioner = LocalVolumeProvisioner(self.api_client(), self.node.volumes).start()
        self.node.wait_ready(self.api_client(), timeout)
        self.node.start_network_policies(timeout)

    # --- clients ---

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def _write_kubeconfig(self) -> None:
        write_kubeconfig(
            self.pki,
            self.kubeconfig,
            self.server,
            self.pki.admin_cert,
            self.pki.admin_key,
            "testbed-admin",
        )

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
        """Resident memory of each process of the cluster (the real node's too), in MiB."""
        processes = [*self.processes, *(self.node.processes if self.node else [])]
        return {process.name: process.memory_mib()[0] for process in processes}
