"""The operator's cost: time from `kubectl apply` to Ready for 1, 10, 50 and 200 ChatBots, and
the operator's memory, against a floor measured in the same run on the same control plane.

The floor does the least any controller could: it creates the same ChatBots, server-side
applies the same rendered children (generated Secrets included) with as many threads as kopf
runs handlers in, and waits for the same readiness (every Deployment and StatefulSet with
all replicas Ready). The operator path is `kubectl apply` of the ChatBots with
`tertulia operator run` watching, waiting until every ChatBot's phase is Ready. Each size
runs in a fresh namespace that is deleted, and waited for, before the next measurement.

Targets: the operator within 1.5x the floor at 200 ChatBots; its resident memory under
200 MiB there, with every watch it holds (children, named Secrets and ConfigMaps) open.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException

from bench._report import figure, sized
from tertulia.operator.api import GROUP, PLURAL, VERSION, ChatBot
from tertulia.operator.crd import chatbot_crd
from tertulia.operator.kube import Cluster, collection_path
from tertulia.operator.render import render_all
from tertulia.operator.render.gateway import GENERATED_KEYS, generated_api_keys
from tertulia.operator.render.memory import generated_memory_password
from tests.testbed.kube import DEFAULT_NODES, ControlPlane, FakeNode
from tests.testbed.paths import binary
from tests.testbed.process import eventually
from tests.testbed.servers import start_operator

REPO = Path(__file__).resolve().parents[1]
SIZES = tuple(
    int(n) for n in os.environ.get("BENCH_CHATBOTS", sized("1,10,50,200", "2")).split(",")
)
IMAGE = "tertulia:bench"
# The size the targets are set for.
TARGET_SIZE = 200
TIMEOUT = 1200.0
POLL_SECONDS = 0.2
# Room for 200 ChatBots of three pods each, beside the test bed's usual nodes.
NODES = (
    *DEFAULT_NODES,
    *(FakeNode(f"bench-node-{index}", cpu="32", memory="128Gi", pods=200) for index in range(6)),
)
# kopf runs sync handlers on asyncio's default executor; the floor gets as many threads.
WORKERS = min(32, (os.cpu_count() or 1) + 4)


@dataclass(frozen=True)
class Result:
    chatbots: int
    floor_s: float
    operator_s: float
    operator_rss_mib: float
    operator_peak_mib: float


def chatbot_bodies(namespace: str, count: int) -> list[dict[str, Any]]:
    """`count` copies of the CPU Ollama example, sized so 200 fit the test bed's CPU nodes."""
    example = yaml.safe_load((REPO / "manifests" / "examples" / "cpu-ollama.yaml").read_text())
    example["spec"]["model"]["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}}
    bodies = []
    for index in range(count):
        body = copy.deepcopy(example)
        body["metadata"] = {"name": f"bot-{index:03d}", "namespace": namespace}
        bodies.append(body)
    return bodies


@contextmanager
def fresh_namespace(cluster: Cluster, name: str) -> Iterator[str]:
    cluster.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
    try:
        yield name
    finally:
        cluster.request("DELETE", f"/api/v1/namespaces/{name}")

        def gone() -> bool:
            try:
                cluster.request("GET", f"/api/v1/namespaces/{name}")
            except ApiException as error:
                return bool(error.status == 404)
            return False

        eventually(gone, TIMEOUT, f"namespace {name} to be deleted", POLL_SECONDS)


def timed(until: Callable[[], bool], what: str, started: float) -> float:
    eventually(until, TIMEOUT, what, POLL_SECONDS)
    return time.monotonic() - started


def workloads_ready(cluster: Cluster, namespace: str, expected: int) -> bool:
    workloads = [
        item
        for kind in ("Deployment", "StatefulSet")
        for item in cluster.request("GET", collection_path("apps/v1", kind, namespace))["items"]
    ]
    return len(workloads) == expected and all(
        w["status"].get("readyReplicas", 0) == w["spec"]["replicas"] for w in workloads
    )


def floor(cluster: Cluster, namespace: str, count: int) -> float:
    chatbots = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"

    def converge(body: dict[str, Any]) -> int:
        bot = ChatBot.from_body(cluster.request("POST", chatbots, body=body))
        keys = {key: secrets.token_urlsafe(32) for key in GENERATED_KEYS}
        cluster.create(generated_api_keys(bot, keys))
        cluster.create(generated_memory_password(bot, secrets.token_urlsafe(32)))
        children = render_all(bot, image=IMAGE, ready_platforms=set())
        for manifest in children:
            cluster.apply(manifest)
        return sum(m["kind"] in ("Deployment", "StatefulSet") for m in children)

    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        expected = sum(pool.map(converge, chatbot_bodies(namespace, count)))
    return timed(
        lambda: workloads_ready(cluster, namespace, expected), "the floor's workloads", started
    )


def all_ready(cluster: Cluster, namespace: str, count: int) -> bool:
    bots = cluster.request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}")
    return len(bots["items"]) == count and all(
        bot.get("status", {}).get("phase") == "Ready" for bot in bots["items"]
    )


def operator_path(control_plane: ControlPlane, namespace: str, count: int) -> float:
    documents = {"apiVersion": "v1", "kind": "List", "items": chatbot_bodies(namespace, count)}
    cluster = Cluster(control_plane.api_client())
    started = time.monotonic()
    subprocess.run(
        [str(binary("kubectl")), "apply", "-f", "-"],
        input=json.dumps(documents),
        env=control_plane.client_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return timed(lambda: all_ready(cluster, namespace, count), "every ChatBot Ready", started)


def measure(control_plane: ControlPlane, workdir: Path, count: int) -> Result:
    cluster = Cluster(control_plane.api_client())
    # The floor runs with no operator watching, so nothing but the floor touches its objects.
    with fresh_namespace(cluster, f"floor-{count}") as namespace:
        floor_s = floor(cluster, namespace, count)
    operator = start_operator(control_plane.kubeconfig, workdir / f"operator-{count}", image=IMAGE)
    try:
        with fresh_namespace(cluster, f"operator-{count}") as namespace:
            operator_s = operator_path(control_plane, namespace, count)
            rss, peak = operator.memory_mib()
    finally:
        operator.stop()
    return Result(count, floor_s, operator_s, rss, peak)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        workdir = Path(tmp)
        with ControlPlane(workdir / "cluster", nodes=NODES) as control_plane:
            control_plane.install_crd(chatbot_crd())
            results = [measure(control_plane, workdir, count) for count in SIZES]
    print(f"kubectl apply -> Ready (CPU Ollama ChatBots, {WORKERS} floor threads)")
    header = ("ChatBots", 8), ("floor s", 9), ("operator s", 11), ("ratio", 7), ("RSS MiB", 9)
    print(" ".join(f"{name:>{width}}" for name, width in header), f"{'peak':>6}")
    for r in results:
        print(
            f"{r.chatbots:>8} {r.floor_s:>9.2f} {r.operator_s:>11.2f} "
            f"{r.operator_s / r.floor_s:>6.2f}x {r.operator_rss_mib:>9.1f} "
            f"{r.operator_peak_mib:>6.1f}"
        )
    last = results[-1]
    ratio_met, memory_met = last.operator_s / last.floor_s <= 1.5, last.operator_peak_mib < 200
    print(
        f"target at {last.chatbots}: ratio <= 1.5x ({'met' if ratio_met else 'MISSED'}), "
        f"memory < 200 MiB ({'met' if memory_met else 'MISSED'})"
    )
    # The targets hold at 200 ChatBots; a smaller last size reports its figures without one.
    at_target = last.chatbots == TARGET_SIZE
    for r in results:
        targeted = at_target and r is last
        figure(
            "operator",
            f"{r.chatbots} ChatBots to Ready, against the floor",
            r.operator_s / r.floor_s,
            "x",
            "<= 1.5" if targeted else "",
            ratio_met if targeted else None,
        )
    figure(
        "operator",
        f"peak memory at {last.chatbots} ChatBots",
        last.operator_peak_mib,
        "MiB",
        "< 200" if at_target else "",
        memory_met if at_target else None,
    )


if __name__ == "__main__":
    main()
