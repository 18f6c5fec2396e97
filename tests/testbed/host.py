"""What the real node must leave as it found it: the host's kernel settings, firewall rules,
mounts, cgroups, network links and namespaces. `host_state` reads them; two readings from
before and after a node's life must be equal."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

# The mount point of named network namespaces, made by the first test bed that needs it.
NETNS_MOUNT = "/run/netns"

# The kernel settings a kubelet, kube-proxy or CNI plugin would change if let loose.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
)


def _lines(*argv: str) -> list[str]:
    result = subprocess.run(argv, capture_output=True, text=True)
    # iptables-save stamps its output with the time: only rules and tables count.
    return sorted(line for line in result.stdout.splitlines() if not line.startswith("#"))


def host_state() -> dict[str, list[str]]:
    sysctls = []
    for key in SYSCTLS:
        path = Path("/proc/sys") / key
        if path.exists():
            sysctls.append(f"{key}={path.read_text().strip()}")
    mounts = sorted(
        " ".join((fields[4], fields[-3]))
        for fields in (
            line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()
        )
    )
    cgroups = sorted(
        str(path)
        for controller in Path("/sys/fs/cgroup").iterdir()
        if controller.is_dir()
        for path in controller.iterdir()
        if path.is_dir()
    )
    return {
        "sysctls": sysctls,
        "iptables": _lines("iptables-save") + _lines("ip6tables-save"),
        "mounts": mounts,
        "cgroups": cgroups,
        "links": _lines("ip", "-o", "link", "show"),
        "namespaces": _lines("ip", "netns", "list"),
    }


# A test bed's network namespace, cgroups and mounts are named after the process that made it.
_TEST_BED = re.compile(r"tertulia-(\d+)-[0-9a-f]+")


def differences(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """What changed, one line per item gone or added; empty when the host is as it was.
    What another test bed holds (another test process's real node, a developer's `make
    testenv NODE=real`, or what a killed one left and a later one cleaned up) is not this
    one's doing, and is left out."""
    changes = []
    # Every other test bed's: one still running beside this one, or one whose process was
    # killed and whose leftovers a later test bed cleans up.
    others = {
        pid
        for state in (before, after)
        for items in state.values()
        for item in items
        for pid in map(int, _TEST_BED.findall(item))
        if pid != os.getpid()
    }
    for aspect, items in before.items():
        gone = sorted(set(items) - set(after[aspect]))
        added = sorted(set(after[aspect]) - set(items))
        changes += [f"{aspect}: gone {item}" for item in gone if not _theirs(item, others)]
        changes += [f"{aspect}: added {item}" for item in added if not _theirs(item, others)]
    return changes


def _theirs(item: str, others: set[int]) -> bool:
    """Whether an item is another test bed's: named after it, or the /run/netns mount that
    whichever came first made for the namespaces of both."""
    if not others:
        return False
    named = {int(pid) for pid in _TEST_BED.findall(item)}
    return bool(named & others) or item.startswith(f"{NETNS_MOUNT} ")
