"""The test bed's control plane: time to Ready and idle resident memory per process.

The baseline is etcd alone, measured in the same run: the ratio says what the Kubernetes
components cost on top of their store.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench._report import figure, sized
from tests.testbed.kube import ControlPlane

IDLE_SECONDS = sized(20.0, 2.0)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-testbed-") as workdir:
        started = time.monotonic()
        with ControlPlane(Path(workdir)) as control_plane:
            ready_after = time.monotonic() - started
            time.sleep(IDLE_SECONDS)
            memory = control_plane.resident_memory_mib()
    total = sum(memory.values())
    print(f"control plane Ready (4 kwok nodes, default ServiceAccount) in {ready_after:.1f} s")
    print(f"idle resident memory after {IDLE_SECONDS:.0f} s:")
    for name, mib in memory.items():
        print(f"  {name:<24} {mib:7.1f} MiB")
    print(f"  {'total':<24} {total:7.1f} MiB  ({total / memory['etcd']:.1f}x etcd alone)")
    figure("testbed", "control plane to Ready", ready_after, "s")
    figure("testbed", "idle memory, against etcd alone", total / memory["etcd"], "x")


if __name__ == "__main__":
    main()
