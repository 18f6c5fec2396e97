"""One real worker node for the test bed's cluster: containerd (Debian's, with runc and the CNI
bridge plugin), the kubelet and kube-proxy built from the pinned Kubernetes module, CoreDNS
for cluster DNS and kube-router's network policy controller, all inside the node's namespaces
(`netns.py`), beside the kwok nodes.

The kubelet's pods get their own cgroup root, containerd and the kubelet write their state
under the node's folder or into memory-backed mounts that exist only in the node's mount
namespace, and `stop` removes every process, cgroup and namespace it made, so the host is as
it was (`host.py` checks it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import yaml

from tests.testbed.netns import NODE_IP, SERVICE_CIDR, NodeNamespace
from tests.testbed.paths import binary, cache_dir, versions
from tests.testbed.pki import Pki, issue, write_kubeconfig
from tests.testbed.process import ManagedProcess

NODE_NAME = "realnode"
POD_CIDR = "10.244.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
APISERVER_PORT = 6443
CGROUP_ROOT = Path("/sys/fs/cgroup")


def in_node_kubeconfig(pki: Pki, path: Path, cert: Path, key: Path, user: str) -> Path:
    """A kubeconfig for a daemon inside the node, reaching the API server at the node's IP."""
    return write_kubeconfig(pki, path, f"https://{NODE_IP}:{APISERVER_PORT}", cert, key, user)


class ImageStore:
    """containerd's content and snapshots, kept across runs in the user cache so an image is
    imported once per build; a second node running meanwhile gets a private store instead."""

    def __init__(self, workdir: Path) -> None:
        shared = cache_dir() / "node" / "containerd"
        shared.mkdir(parents=True, exist_ok=True)
        self._lock: IO[str] | None = (shared / ".lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.root = shared / "root"
            self._imported = shared / "imported.json"
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            self.root = workdir / "containerd" / "root"
            self._imported = workdir / "containerd" / "imported.json"
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def shared(self) -> bool:
        return self._lock is not None

    def needs(self, archive: Path) -> bool:
        """Whether `archive` (a docker-archive) differs from what was imported from it last."""
        return self._recorded().get(str(archive)) != self._fingerprint(archive)

    def record(self, archive: Path) -> None:
        recorded = self._recorded()
        recorded[str(archive)] = self._fingerprint(archive)
        self._imported.write_text(json.dumps(recorded, indent=1))

    def _recorded(self) -> dict[str, str]:
        try:
            loaded: dict[str, str] = json.loads(self._imported.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return loaded

    @staticmethod
    def _fingerprint(archive: Path) -> str:
        stat = archive.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class RealNode:
    """The node's daemons, started after the control plane inside `namespace`."""

    def __init__(self, workdir: Path, namespace: NodeNamespace, pki: Pki, logs: Path) -> None:
        self.workdir = workdir
        self.namespace = namespace
        self.pki = pki
        self.logs = logs
        self.processes: list[ManagedProcess] = []
        self.cgroup_name = namespace.name
        self.images: ImageStore | None = None
        self.volumes = workdir / "volumes"

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "run" / "containerd.sock"

    # --- lifecycle ---

    def start(self, admin_kubeconfig: Path, images: list[Path], timeout: float = 120.0) -> None:
        """Start containerd (importing `images`, docker-archives), the kubelet, kube-proxy and
        CoreDNS; `admin_kubeconfig` is an in-node kubeconfig for CoreDNS."""
        for folder in ("run", "cni/net.d", "cni/ipam", "podlogs", "kubelet", "etc", "pki"):
            (self.workdir / folder).mkdir(parents=True, exist_ok=True)
        self.volumes.mkdir(exist_ok=True)
        self._private_mounts()
        self._make_cgroup_root()
        self._start_containerd(timeout)
        self.import_images(images)
        self._start_kubelet()
        self._start_kube_proxy()
        self._start_coredns(admin_kubeconfig)

    def stop(self) -> None:
        """Stop the daemons newest first, then every container they left, then the cgroups."""
        for process in reversed(self.processes):
            if process.name == "containerd":
                self._remove_containers()
            process.stop()
        self.processes.clear()
        self._kill_leftovers()
        self._remove_cgroup_root()
        if self.images is not None:
            self.images.release()

    # --- the parts ---

    def _private_mounts(self) -> None:
        # Paths the daemons write to whatever their settings say (shim sockets under
        # /run/containerd, pod network namespaces under /run/netns, libcni's result cache
        # under /var/lib/cni, links in /var/log/containers) get memory-backed mounts that only
        # the node's mount namespace sees. Their state proper lives in the node's folder.
        for target in ("/run", "/var/log", "/var/lib"):
            self.namespace.run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", target)
        self.namespace.run("mkdir", "-p", "/run/netns", "/run/containerd")

    def _cgroup_dirs(self) -> list[Path]:
        return [
            controller / self.cgroup_name
            for controller in sorted(CGROUP_ROOT.iterdir())
            if controller.is_dir() and (controller / "cgroup.procs").exists()
        ]

    def _make_cgroup_root(self) -> None:
        # The kubelet's cgroupRoot must exist in every hierarchy; a cpuset child starts with
        # no CPUs or memory nodes, so it gets its parent's.
        for directory in self._cgroup_dirs():
            directory.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (directory / name).exists():
                    (directory / name).write_text((directory.parent / name).read_text())

    def _remove_cgroup_root(self) -> None:
        for directory in self._cgroup_dirs():
            if not directory.exists():
                continue
            # Deepest first: a cgroup directory is removed with rmdir once it has no children.
            for child in sorted(
                (path for path in directory.rglob("*") if path.is_dir()),
                key=lambda path: len(path.parts),
                reverse=True,
            ):
                with contextlib.suppress(OSError):
                    child.rmdir()
            with contextlib.suppress(OSError):
                directory.rmdir()

    def _daemon_kubeconfig(self, name: str, user: str, group: str | None = None) -> Path:
        """A client certificate for `user` (in `group`), and NAME.kubeconfig that uses it."""
        cert, key = issue(self.pki, self.workdir / "pki", f"{name}-client", user, group)
        return in_node_kubeconfig(self.pki, self.workdir / f"{name}.kubeconfig", cert, key, name)

    def _start(self, name: str, args: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, self.namespace.command(args), self.logs).start()
        self.processes.append(process)
        return process

    def _start_containerd(self, timeout: float) -> None:
        self.images = ImageStore(self.workdir)
        state = self.workdir / "containerd" / "state"
        state.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "containerd.toml"
        config.write_text(
            CONTAINERD_CONFIG.format(
                root=self.images.root,
                state=state,
                # The pause image of the pinned release (hack/versions.env: PAUSE_VERSION).
                pause=f"registry.k8s.io/pause:{versions()['PAUSE_VERSION']}",
                socket=self.containerd_socket,
                cni_conf=self.workdir / "cni" / "net.d",
            )
        )
        (self.workdir / "cni" / "net.d" / "10-realnode.conflist").write_text(
            json.dumps(self._cni_config(), indent=1)
        )
        containerd = self._start("containerd", ["containerd", "--config", str(config)])
        containerd.wait_until(
            lambda: self.ctr("version", check=False).returncode == 0, timeout, "serving"
        )

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "0.4.0",
            "name": "realnode",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """containerd's own client, in the Kubernetes namespace of its store."""
        return self.namespace.run(
            "ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args,
            check=check,
        )  # fmt: skip

    def import_images(self, archives: list[Path]) -> None:
        """Import docker-archives into containerd; ones imported before are skipped."""
        assert self.images is not None
        for archive in archives:
            if self.images.shared and not self.images.needs(archive):
                continue
            self.ctr("images", "import", "--no-unpack=false", str(archive))
            self.images.record(archive)

    def _start_kubelet(self) -> None:
        kubelet_dir = self.workdir / "kubelet"
        pki_dir = self.workdir / "pki"
        kubeconfig = self._daemon_kubeconfig("kubelet", f"system:node:{NODE_NAME}", "system:nodes")
        serving_cert, serving_key = issue(
            self.pki, pki_dir, "kubelet-serving", NODE_NAME, server_names=(NODE_NAME, NODE_IP)
        )
        resolv = self.workdir / "etc" / "pod-resolv.conf"
        # Pods with dnsPolicy Default get this; nothing outside the node answers.
        resolv.write_text(f"nameserver {NODE_IP}\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # 1.35 refuses cgroup v1 without it; this machine has v1 hierarchies.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_name}",
            "failSwapOn": False,
            # Never write global kernel settings; the node's mount namespace fakes them.
            "protectKernelDefaults": True,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "podLogsDir": str(self.workdir / "podlogs"),
            "address": NODE_IP,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "tlsCertFile": str(serving_cert),
            "tlsPrivateKeyFile": str(serving_key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [NODE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv),
            # The only copies of the test bed's images are in this store: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "serializeImagePulls": False,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
        }
        config_path = self.workdir / "kubelet.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self._start(
            "kubelet",
            [
                str(binary("kubelet")),
                f"--config={config_path}",
                f"--kubeconfig={kubeconfig}",
                f"--node-ip={NODE_IP}",
                f"--hostname-override={NODE_NAME}",
                f"--root-dir={kubelet_dir}",
                f"--cert-dir={pki_dir}",
                "--node-labels=tertulia.dev/testbed-node=real",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self) -> None:
        kubeconfig = self._daemon_kubeconfig("kube-proxy", "system:kube-proxy")
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "bindAddress": NODE_IP,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Zeros leave the global conntrack settings alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        config_path = self.workdir / "kube-proxy.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self._start("kube-proxy", [str(binary("kube-proxy")), f"--config={config_path}"])

    def start_network_policies(self, timeout: float) -> None:
        """kube-router's network policy controller alone, beside the bridge plugin (as k3s
        runs it beside flannel): NetworkPolicies become iptables rules and ipsets. It needs
        its Node object, so it starts once the node has registered."""
        kubeconfig = self._daemon_kubeconfig("kube-router", "system:kube-router", "system:masters")
        self._start(
            "kube-router",
            [
                str(binary("kube-router")),
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--health-port=0",
                "--metrics-port=0",
            ],
        )
        router = self.processes[-1]
        router.wait_until(
            lambda: (
                self.namespace.run("iptables", "-S", "KUBE-ROUTER-FORWARD", check=False).returncode
                == 0
            ),
            timeout,
            "enforcing network policies",
        )

    def _start_coredns(self, admin_kubeconfig: Path) -> None:
        corefile = self.workdir / "Corefile"
        corefile.write_text(
            COREFILE.format(
                node_ip=NODE_IP,
                hosts=self.workdir / "etc" / "dns-hosts",
                kubeconfig=admin_kubeconfig,
                domain=CLUSTER_DOMAIN,
            )
        )
        (self.workdir / "etc" / "dns-hosts").write_text(f"{NODE_IP} {NODE_NAME}\n")
        self._start("coredns", [str(binary("coredns")), "-conf", str(corefile)])

    # --- teardown ---

    def _remove_containers(self) -> None:
        """Every container the kubelet left, killed and removed, so a shared store starts
        the next run empty."""
        for task in self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
            self.ctr("tasks", "delete", "--force", task, check=False)
        containers = self.ctr("containers", "list", "--quiet", check=False).stdout.split()
        if containers:
            self.ctr("containers", "delete", *containers, check=False)

    def _kill_leftovers(self) -> None:
        """SIGKILL what still runs in the pods' cgroups or in the node's mount namespace
        (runc shims, a container's processes), the namespace's holder excepted."""
        holder = self.namespace.holder_pid
        mount_ns = Path(f"/proc/{holder}/ns/mnt").readlink()
        for _ in range(50):
            pids = {pid for directory in self._cgroup_dirs() for pid in _cgroup_pids(directory)}
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) == holder:
                    continue
                with contextlib.suppress(OSError):
                    if (entry / "ns" / "mnt").readlink() == mount_ns:
                        pids.add(int(entry.name))
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def wait_ready(self, api: Any, timeout: float) -> None:
        """Until the node reports Ready and cluster DNS answers for the `kubernetes` Service."""
        from kubernetes import client

        core = client.CoreV1Api(api)

        def ready() -> bool:
            try:
                node = core.read_node(NODE_NAME)
            except client.ApiException:
                return False
            return any(
                c.type == "Ready" and c.status == "True" for c in node.status.conditions or []
            )

        kubelet = next(p for p in self.processes if p.name == "kubelet")
        kubelet.wait_until(ready, timeout, "a Ready node")
        coredns = next(p for p in self.processes if p.name == "coredns")
        coredns.wait_until(
            lambda: self.resolve(f"kubernetes.default.svc.{CLUSTER_DOMAIN}") == "10.96.0.1",
            timeout,
            "answering for the kubernetes Service",
        )

    def resolve(self, name: str) -> str | None:
        """The address cluster DNS gives `name`, asked from the node."""
        result = self.namespace.run("getent", "ahostsv4", name, check=False)
        return result.stdout.split()[0] if result.returncode == 0 and result.stdout else None


def _cgroup_pids(directory: Path) -> set[int]:
    pids: set[int] = set()
    if not directory.exists():
        return pids
    for procs in directory.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids |= {int(pid) for pid in procs.read_text().split()}
    return pids


CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{state}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This machine gives no CAP_SYS_RESOURCE: a sandbox may not lower its oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
"""

COREFILE = """\
.:53 {{
    bind {node_ip} 127.0.0.1
    errors
    ready 127.0.0.1:8181
    hosts {hosts} {{
        fallthrough
    }}
    kubernetes {domain} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
"""
