"""`python -m tests.testbed serve DIR`: run the control plane in the foreground until stopped.

hack/testenv.sh starts this in the background for a developer; it writes DIR/kubeconfig and
then DIR/ready, and stops every process it started on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tests.testbed.kube import ControlPlane


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the control plane and wait")
    serve.add_argument("directory", type=Path)
    arguments = parser.parse_args()

    directory: Path = arguments.directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ready").unlink(missing_ok=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    with ControlPlane(directory) as control_plane:
        memory = control_plane.resident_memory_mib()
        (directory / "ready").write_text(control_plane.server + "\n")
        print(f"control plane ready at {control_plane.server}", flush=True)
        for name, mib in memory.items():
            print(f"  {name:<24} {mib:7.1f} MiB resident", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
