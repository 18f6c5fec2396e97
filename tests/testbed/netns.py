"""The real node's namespaces: a network namespace with the node's address, and a holder
process whose private mount namespace every node daemon shares.

Nothing here changes the host: the daemons see faked kernel settings and their own
/etc/hosts and /etc/resolv.conf through bind mounts that exist only in the private mount
namespace, and pods reach only addresses inside the network namespace. The test process stays
in the host's namespaces; it opens sockets inside with `listen` and `connect`, and reaches
the API server through a `TcpForwarder` on the host's loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.testbed.process import ManagedProcess, eventually

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
NAME_PREFIX = "tertulia-"

NODE_IP = "10.250.0.1"
NODE_PREFIX = 24
SERVICE_CIDR = "10.96.0.0/16"

# The kernel settings the kubelet insists on (container_manager_linux.go, setupKernelTunables).
# Each one the host has otherwise is faked inside the mount namespace with a file holding the
# wanted value, so the kubelet reads what it wants and writes nothing.
KUBELET_KERNEL_TUNABLES = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _setns(fd: int, kind: int) -> None:
    if _libc.setns(fd, kind) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def _is_mountpoint(path: Path) -> bool:
    target = str(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4] == target:
            return True
    return False


def remove_stale_namespaces() -> list[str]:
    """Delete the namespaces of earlier runs whose process is gone (a run killed outright)."""
    removed = []
    for path in NETNS_DIR.glob(f"{NAME_PREFIX}*") if NETNS_DIR.is_dir() else []:
        owner = path.name.removeprefix(NAME_PREFIX).split("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            subprocess.run(["ip", "netns", "del", path.name], capture_output=True)
            removed.append(path.name)
    return removed


class NodeNamespace:
    """The network namespace `name` with the node's address on a veth pair, and a holder
    process that keeps it and a private mount namespace alive."""

    def __init__(self, workdir: Path, logs: Path, *, name: str | None = None) -> None:
        self.name = name or f"{NAME_PREFIX}{os.getpid()}-{os.urandom(2).hex()}"
        self.workdir = workdir
        self.logs = logs
        self.holder: ManagedProcess | None = None
        self._created_netns_mount = False

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    @property
    def holder_pid(self) -> int:
        if self.holder is None:
            raise RuntimeError("the node's namespaces have not been created")
        return self.holder.pid

    # --- lifecycle ---

    def create(self, hosts: dict[str, str]) -> NodeNamespace:
        """Make the namespaces; `hosts` maps names to addresses for the node's /etc/hosts."""
        remove_stale_namespaces()
        self._created_netns_mount = not _is_mountpoint(NETNS_DIR)
        _run("ip", "netns", "add", self.name)
        try:
            self._configure_network()
            self._start_holder()
            self._mount_overrides(hosts)
        except BaseException:
            self.delete()
            raise
        return self

    def _configure_network(self) -> None:
        netns = ("ip", "-n", self.name)
        _run(*netns, "link", "set", "lo", "up")
        # This kernel has no dummy link driver: a veth pair with both ends inside carries the
        # node's address.
        _run(*netns, "link", "add", "node0", "type", "veth", "peer", "name", "node0p")
        _run(*netns, "addr", "add", f"{NODE_IP}/{NODE_PREFIX}", "dev", "node0")
        _run(*netns, "link", "set", "node0", "up")
        _run(*netns, "link", "set", "node0p", "up")
        # No default route: nothing leaves the namespace. ClusterIPs need a route so the
        # node's own processes reach them through kube-proxy's rules.
        _run(*netns, "route", "add", SERVICE_CIDR, "dev", "node0")

    def _start_holder(self) -> None:
        self.holder = ManagedProcess(
            "node-namespaces",
            [
                "nsenter",
                f"--net={self.path}",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sleep",
                "infinity",
            ],
            self.logs,
        ).start()
        own = Path("/proc/self/ns/mnt").readlink()
        eventually(
            lambda: Path(f"/proc/{self.holder_pid}/ns/mnt").readlink() != own,
            10,
            "the holder's private mount namespace",
            interval=0.05,
        )

    def _mount_overrides(self, hosts: dict[str, str]) -> None:
        etc = self.workdir / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        overrides: dict[Path, Path] = {}
        for key, wanted in KUBELET_KERNEL_TUNABLES.items():
            target = Path("/proc/sys") / key
            if target.exists() and int(target.read_text().split()[0]) != wanted:
                fake = etc / ("sysctl-" + key.replace("/", "-"))
                fake.write_text(f"{wanted}\n")
                overrides[target] = fake
        host_lines = ["127.0.0.1 localhost", *(f"{ip} {name}" for name, ip in hosts.items())]
        (etc / "hosts").write_text("\n".join(host_lines) + "\n")
        overrides[Path("/etc/hosts")] = etc / "hosts"
        # The node's own resolver is the cluster DNS server on the node's loopback.
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        overrides[Path("/etc/resolv.conf")] = etc / "resolv.conf"
        for target, source in overrides.items():
            self.run("mount", "--bind", str(source), str(target))

    def delete(self) -> None:
        """Stop the holder (its mounts go with it), delete the network namespace, and undo
        the bind mount `ip netns add` made of /run/netns when it made one."""
        if self.holder is not None:
            self.holder.stop()
            self.holder = None
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        if (
            self._created_netns_mount
            and NETNS_DIR.is_dir()
            and not any(NETNS_DIR.iterdir())
            and _is_mountpoint(NETNS_DIR)
        ):
            subprocess.run(["umount", str(NETNS_DIR)], capture_output=True)
            with contextlib.suppress(OSError):
                NETNS_DIR.rmdir()

    # --- running things inside ---

    def command(self, argv: list[str], cwd: Path | None = None) -> list[str]:
        """`argv` run inside both namespaces; nsenter execs it, so its PID is the program's."""
        return [
            "nsenter",
            "-t",
            str(self.holder_pid),
            "-m",
            "-n",
            f"--wd={cwd or self.workdir}",
            *argv,
        ]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(list(argv)), capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed in the node: {result.stderr.strip()}")
        return result

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread in this network namespace (network namespaces are per thread);
        sockets made meanwhile stay in it for their whole life."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            _setns(target, CLONE_NEWNET)
            try:
                yield
            finally:
                _setns(own, CLONE_NEWNET)
        finally:
            os.close(target)
            os.close(own)

    def listen(self, host: str = NODE_IP, port: int = 0) -> socket.socket:
        """A listening TCP socket inside the namespace, for a server of the test process."""
        with self.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        return sock

    def connect(self, address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
        with self.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock


class TcpForwarder:
    """127.0.0.1:`port` on the host, forwarded to `target` inside the node's namespace: how
    kubectl, helm and the tests reach the API server without the node reaching the host."""

    def __init__(self, namespace: NodeNamespace, target: tuple[str, int]) -> None:
        self.namespace = namespace
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="forwarder", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = self.namespace.connect(self.target)
        except OSError:
            client.close()
            return
        with self._lock:
            self._connections |= {client, upstream}
        pumps = [
            threading.Thread(target=self._pump, args=pair, daemon=True)
            for pair in ((client, upstream), (upstream, client))
        ]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.close()
        with self._lock:
            self._connections -= {client, upstream}

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            # One side is gone: end both directions, so the other pump returns too.
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._connections:
                with contextlib.suppress(OSError):
                    sock.close()
