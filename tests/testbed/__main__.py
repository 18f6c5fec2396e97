"""`python -m tests.testbed serve DIR [--real-node IMAGES]`: run the control plane in the
foreground until stopped, with the real node and the docker-archives in IMAGES when asked.

hack/testenv.sh starts this in the background for a developer; it writes DIR/kubeconfig and
then DIR/ready, and stops every process it started on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tests.testbed.kube import DEFAULT_NODES, REAL_NODE_COMPANIONS, ControlPlane


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the control plane and wait")
    serve.add_argument("directory", type=Path)
    serve.add_argument(
        "--real-node",
        type=Path,
        metavar="IMAGES",
        help="add the real node, importing the docker-archives of this folder (make images)",
    )
    arguments = parser.parse_args()

    directory: Path = arguments.directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ready").unlink(missing_ok=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    images: tuple[Path, ...] = ()
    if arguments.real_node is not None:
        images = tuple(sorted(arguments.real_node.glob("*.tar")))
    real = arguments.real_node is not None
    # With the real node, a developer's pods go to it (kwok's CPU nodes would take them and
    # never run them): beside it only GPU nodes, tainted, as in the cluster tier.
    nodes = REAL_NODE_COMPANIONS if real else DEFAULT_NODES
    plane = ControlPlane(directory, nodes, real_node=real, images=images)
    with plane as control_plane:
        memory = control_plane.resident_memory_mib()
        (directory / "ready").write_text(control_plane.server + "\n")
        print(f"control plane ready at {control_plane.server}", flush=True)
        for name, mib in memory.items():
            print(f"  {name:<24} {mib:7.1f} MiB resident", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
