"""Server processes for the test bed: free ports, logs to files, and teardown with no orphans."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


def _ephemeral_ports_start() -> int:
    """Where the kernel's range for outgoing connections' local ports begins."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports handed out lately, by any test process on this machine: a file each.
_HANDED_OUT = Path(tempfile.gettempdir()) / "tertulia-test-ports"
_HANDED_OUT_SECONDS = 600


def reserve_port(port: int) -> bool:
    """Whether no test process has had `port` in the last ten minutes; if so, it is this
    one's now. Two workers choosing at random may otherwise pick the same free port, and the
    second server to bind it fails ('address already in use', or one server's health checks
    reaching the other's port)."""
    _HANDED_OUT.mkdir(exist_ok=True)
    mark = _HANDED_OUT / str(port)
    try:
        os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        pass
    # Handed out long ago: cleared, for a later pick to take afresh (not this one: two
    # processes finding it stale at once must not both have it).
    with contextlib.suppress(FileNotFoundError):
        if time.time() - mark.stat().st_mtime > _HANDED_OUT_SECONDS:
            mark.unlink()
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that no other test
    process has been given lately (`reserve_port`).

    Chosen below the ephemeral range (and the NodePort one): a port the kernel hands out
    (bind to 0) may be taken by any outgoing connection before the server binds it, which
    failed runs with 'address already in use' while other tests held many connections
    open."""
    # Kubernetes NodePorts start at 30000; stay under them too.
    end = min(30000, _ephemeral_ports_start())
    for _ in range(200):
        port = random.randrange(end // 2, end)
        if not reserve_port(port):
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def eventually(
    check: Callable[[], Any], timeout: float = 60.0, what: str = "", interval: float = 0.25
) -> Any:
    """Poll `check` until it returns something truthy, and return that; TimeoutError naming
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or check}")
        time.sleep(interval)


def _die_with_parent() -> None:
    # Runs in the child before exec: a new process group for clean group kills, and SIGTERM
    # from the kernel if the test run is killed outright, so no server outlives it.
    os.setsid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ProcessFailedError(RuntimeError):
    """A test-bed server exited or never became ready; the message carries its log's tail."""


class ManagedProcess:
    """One server process with its own process group and a log file."""

    def __init__(
        self,
        name: str,
        args: Sequence[str | os.PathLike[str]],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        survive_parent: bool = False,
    ) -> None:
        self.name = name
        self.args = [os.fspath(arg) for arg in args]
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.survive_parent = survive_parent
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise ProcessFailedError(f"{self.name} was never started")
        return self._process

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=self.survive_parent,
            preexec_fn=None if self.survive_parent else _die_with_parent,
        )
        return self

    def memory_mib(self) -> tuple[float, float]:
        """Resident memory now and at its peak, in MiB, read from /proc."""
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
        )
        now, peak = (int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))
        return now, peak

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str = "ready") -> None:
        """Poll `ready` until it holds; fail early, with the log, if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise ProcessFailedError(
                    f"{self.name} exited with {self.popen.returncode} before it was {what}; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.2)
        raise ProcessFailedError(
            f"{self.name} was not {what} after {timeout:.0f}s; "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after `grace`."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Grandchildren that stayed in the group after the leader went.
        deadline = time.monotonic() + grace
        while live_group_members(process.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.05)
        if self._log is not None:
            self._log.close()
            self._log = None


def live_group_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that still run (zombies awaiting their reaper excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the parenthesised command: state, ppid, pgrp, ...
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
