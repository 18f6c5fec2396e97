"""The model autoscaler's control loop: from zero replicas and under a load step, on the test
bed's control plane with the operator running.

The gateway's own autoscaler (tertulia.gateway.autoscale) runs here with the rights the
operator grants a gateway (its ServiceAccount's bound token) and a real Redis for the shared
load; the model's pods are kwok's, Ready as soon as they are scheduled, so the figures are the
loop's own cost (scale subresource, operator, controllers, scheduler), not a model's load
time. The headless Service's DNS is played by a poll of the ready model pods every half
second, as often as the gateway looks while requests wait. The real node's figures (a
llama.cpp replica woken, its first token) come from the cluster tier's scale-from-zero test.

- From zero: 20 requests held at zero replicas; none lost, none failed; the time from the
  replica's Ready to the requests going on (target: at most 2 s); then idle, the time past the
  scale-down delay until the model is back to zero after the last answer (target: at most
  5 s: two intervals and the operator's reaction; down to one interval early, as the load is
  sampled once an interval).
- Load step: 1 request in flight, then 16 at once (target 4 per replica, maximum 4): the time
  until the replicas asked for and Ready are 4 (target: within the stabilisation window, here
  the scale-down delay), and the most replicas ever seen (target: never over the maximum).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench._report import figure, sized
from tertulia.gateway.autoscale import Autoscaler
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.routing import Router
from tertulia.gateway.settings import AutoscalingSettings, KubernetesSettings
from tertulia.gateway.store import RedisStore
from tertulia.operator.api import GROUP, PLURAL, VERSION
from tertulia.operator.crd import chatbot_crd
from tertulia.operator.kube import Cluster as KubeCluster
from tests.testbed.kube import ControlPlane
from tests.testbed.servers import start_operator, start_redis

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "scale"
BOT = "bench"
HELD = sized(20, 4)
STEP = 16
TARGET = 4
MAXIMUM = 4
DELAY = sized(30.0, 6.0)
INTERVAL = 1.0
ANSWER_SECONDS = 1.0
TIMEOUT = 300.0


class Cluster:
    """What the benchmark reads of the control plane: the ChatBot and its model's pods."""

    def __init__(self, control_plane: ControlPlane) -> None:
        self.api = KubeCluster(control_plane.api_client())

    def chatbot(self) -> dict[str, Any]:
        return self.api.request(
            "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}/{BOT}"
        )

    def asked(self) -> int:
        return int(self.chatbot()["spec"]["model"].get("replicas", 0))

    def pods(self) -> list[dict[str, Any]]:
        selector = self.chatbot().get("status", {}).get("model", {}).get("selector")
        if not selector:
            return []
        found = self.api.request(
            "GET", f"/api/v1/namespaces/{NAMESPACE}/pods", query=[("labelSelector", selector)]
        )
        return [pod for pod in found["items"] if not pod["metadata"].get("deletionTimestamp")]

    def ready_pods(self) -> list[str]:
        return sorted(
            f"http://{pod['status']['podIP']}:8080/v1"
            for pod in self.pods()
            if ready_since(pod) is not None
        )


def ready_since(pod: dict[str, Any]) -> float | None:
    """When the pod became Ready (to the second), if it is."""
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition["type"] == "Ready" and condition["status"] == "True":
            return datetime.fromisoformat(condition["lastTransitionTime"]).timestamp()
    return None


async def until(check: Any, what: str) -> float:
    """Seconds until `check()` holds."""
    started = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - started > TIMEOUT:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def request(scaler: Autoscaler) -> float:
    """One request: held until a replica is ready, then in flight on it for ANSWER_SECONDS;
    when it went on (wall-clock time)."""
    await scaler.hold()
    went_on = time.time()
    replica = scaler.router.replicas[0]
    scaler.router.acquire(replica)
    await asyncio.sleep(ANSWER_SECONDS)
    scaler.router.release(replica)
    return went_on


async def lookups(cluster: Cluster, router: Router, seen: list[int]) -> None:
    """The headless Service's DNS: the ready model pods, every half second; and the most
    replicas asked for, as they go."""
    while True:
        router.update(await asyncio.to_thread(cluster.ready_pods))
        seen.append(await asyncio.to_thread(cluster.asked))
        await asyncio.sleep(0.5)


async def measure(control_plane: ControlPlane, redis_url: str, workdir: Path) -> None:
    cluster = Cluster(control_plane)
    token = cluster.api.request(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{BOT}-gateway/token",
        body={"spec": {"expirationSeconds": 3600}},
    )["status"]["token"]
    (workdir / "token").write_text(token)
    settings = AutoscalingSettings(
        enabled=True,
        chatbot=BOT,
        namespace=NAMESPACE,
        min_replicas=0,
        max_replicas=MAXIMUM,
        target_in_flight=TARGET,
        scale_down_delay_seconds=DELAY,
        interval_seconds=INTERVAL,
        queue_timeout_seconds=TIMEOUT,
        kubernetes=KubernetesSettings(
            api_url=control_plane.server,
            token_file=workdir / "token",
            ca_file=control_plane.pki.ca_cert,
        ),
    )
    router = Router(f"http://{BOT}-model.{NAMESPACE}.svc:8080/v1")
    store = RedisStore(redis_url)
    scaler = Autoscaler(settings, router, store, GatewayMetrics.create(), member="gateway-0")
    seen: list[int] = []
    tasks = [
        asyncio.create_task(lookups(cluster, router, seen)),
        asyncio.create_task(scaler.run()),
    ]
    try:
        # From zero: every request held, none lost or failed, each going on once a replica
        # is Ready, then answered in ANSWER_SECONDS (in flight on its replica meanwhile).
        results = await asyncio.gather(
            *(request(scaler) for _ in range(HELD)), return_exceptions=True
        )
        released = min(
            (result for result in results if isinstance(result, float)), default=time.time()
        )
        failed = sum(isinstance(result, BaseException) for result in results)
        ready_at = min(filter(None, (ready_since(pod) for pod in cluster.pods())))
        # Ready's time is to the second: the lag is at most this plus one.
        lag = released - ready_at
        print(f"{HELD} requests held at zero; {failed} failed; going on {lag:.1f} s after Ready")
        figure("scale", f"from zero: {HELD} held requests lost or failed", failed, "", "0",
               failed == 0)  # fmt: skip
        figure("scale", "from zero: requests going on after Ready", lag, "s", "<= 2 s (+1)",
               lag <= 3)  # fmt: skip

        # Idle: back to zero once the delay has passed.
        idle = await until(lambda: cluster.asked() == 0, "the model to scale back to zero")
        late = idle - DELAY
        print(
            f"idle: back to zero {idle:.1f} s after the last answer ({late:.1f} s past the delay)"
        )
        figure("scale", "idle: back to zero, past the delay", late, "s", "<= 5 s", late <= 5)
        await until(lambda: not cluster.ready_pods(), "the model's pods to go")

        # A load step: one request in flight, then sixteen.
        seen.clear()
        await until(lambda: router.replicas == (), "the router to see no replica")
        one = asyncio.create_task(scaler.hold())
        await asyncio.wait_for(one, TIMEOUT)
        replica = router.replicas[0]
        router.acquire(replica)
        await until(lambda: cluster.asked() == 1 and len(cluster.ready_pods()) == 1, "one replica")
        for _ in range(STEP - 1):
            router.acquire(replica)
        expected = min(MAXIMUM, -(-STEP // TARGET))
        followed = await until(
            lambda: cluster.asked() == expected and len(cluster.ready_pods()) == expected,
            f"{expected} ready replicas",
        )
        most = max(seen)
        print(f"load step 1 -> {STEP}: {expected} replicas Ready in {followed:.1f} s; most {most}")
        figure("scale", f"load step 1 -> {STEP}: replicas Ready", followed, "s",
               f"<= {DELAY:g} s", followed <= DELAY)  # fmt: skip
        figure("scale", "load step: most replicas seen", most, "", f"<= {MAXIMUM}",
               most <= MAXIMUM)  # fmt: skip
        for _ in range(STEP):
            router.release(replica)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await scaler.aclose()
        await store.aclose()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        workdir = Path(folder)
        redis, redis_url = start_redis(workdir / "redis")
        try:
            with ControlPlane(workdir / "cluster") as control_plane:
                control_plane.install_crd(chatbot_crd())
                operator = start_operator(control_plane.kubeconfig, workdir / "operator")
                try:
                    Cluster(control_plane).api.request(
                        "POST", "/api/v1/namespaces", body={"metadata": {"name": NAMESPACE}}
                    )
                    body = yaml.safe_load(
                        (REPO / "manifests" / "examples" / "cpu-ollama.yaml").read_text()
                    )
                    body["metadata"] = {"name": BOT, "namespace": NAMESPACE}
                    body["spec"]["model"]["replicas"] = 0
                    body["spec"]["model"]["resources"] = {"requests": {"cpu": "100m"}}
                    body["spec"]["model"]["autoscaling"] = {
                        "minReplicas": 0,
                        "maxReplicas": MAXIMUM,
                        "targetInFlight": TARGET,
                        "scaleDownDelaySeconds": int(DELAY),
                    }
                    control_plane.run_tool(
                        "kubectl", "apply", "-f", "-", stdin=yaml.safe_dump(body)
                    )
                    asyncio.run(until_ready(Cluster(control_plane)))
                    asyncio.run(measure(control_plane, redis_url, workdir))
                finally:
                    operator.stop()
        finally:
            redis.stop()


async def until_ready(cluster: Cluster) -> None:
    await until(
        lambda: cluster.chatbot().get("status", {}).get("phase") == "Ready", "the ChatBot Ready"
    )


if __name__ == "__main__":
    main()
