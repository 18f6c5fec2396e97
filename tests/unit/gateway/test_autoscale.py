"""The autoscaler's decisions (a table of loads and the replicas they get, flapping loads
included), requests held at zero replicas, and one gateway's round of reporting and
deciding, with the Kubernetes API faked (the e2e and cluster tiers use the real one)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tertulia.gateway.autoscale import (
    Autoscaler,
    Recommender,
    ScaleFailed,
    ScaleTarget,
    recommend,
)
from tertulia.gateway.errors import BackendUnavailable
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.routing import Router
from tertulia.gateway.settings import AutoscalingSettings, KubernetesSettings
from tertulia.gateway.store import InProcessStore
from tests.testbed.process import free_port

REPLICA = "http://10.0.0.1:8000/v1"


@pytest.mark.parametrize(
    ("load", "target", "minimum", "maximum", "expected"),
    [
        (0, 4, 0, 4, 0),  # idle: scaled to zero
        (0, 4, 1, 4, 1),  # idle: the minimum
        (1, 4, 0, 4, 1),  # any request needs a replica
        (4, 4, 0, 4, 1),
        (5, 4, 0, 4, 2),
        (16, 4, 0, 4, 4),
        (17, 4, 0, 4, 4),  # capped at the maximum
        (100, 4, 0, 3, 3),
        (3, 1.5, 0, 8, 2),
        (2, 4, 2, 5, 2),  # never under the minimum
    ],
)
def test_replicas_for_a_load(
    load: int, target: float, minimum: int, maximum: int, expected: int
) -> None:
    assert recommend(load, target, minimum, maximum) == expected


def run(recommender: Recommender, loads: list[tuple[float, int]], start: int) -> list[int]:
    """The replicas after each (time, load), each decision applied before the next."""
    current, seen = start, []
    for now, load in loads:
        current = recommender.decide(now, load, current).replicas
        seen.append(current)
    return seen


@pytest.mark.parametrize(
    ("name", "loads", "start", "expected"),
    [
        ("up at once", [(0, 0), (2, 9), (4, 9)], 1, [1, 3, 3]),
        (
            "down only after the delay",
            [(0, 12), (2, 0), (8, 0), (10, 0), (12, 0)],
            3,
            [3, 3, 3, 3, 0],
        ),
        # A load that comes and goes every round keeps the peak: no flapping.
        (
            "flapping kept at the peak",
            [(t, 8 * (t % 4 == 0)) for t in range(0, 20, 2)],
            2,
            [2] * 10,
        ),
        # Flapping that stops: down the delay after the last peak.
        (
            "down a delay after the last peak",
            [(0, 8), (2, 0), (4, 8), (6, 0), (8, 0), (14, 0), (16, 0)],
            2,
            [2, 2, 2, 2, 2, 2, 0],
        ),
        ("a smaller load steps down", [(0, 16), (2, 5), (13, 5)], 4, [4, 4, 2]),
        ("never over the maximum", [(0, 400), (2, 400)], 1, [4, 4]),
    ],
)
def test_the_autoscaler_follows_the_load_and_does_not_flap(
    name: str, loads: list[tuple[float, int]], start: int, expected: list[int]
) -> None:
    recommender = Recommender(minimum=0, maximum=4, target=4, delay=10)
    assert run(recommender, loads, start) == expected, name


def test_a_count_set_by_someone_else_is_kept_for_the_delay() -> None:
    recommender = Recommender(minimum=0, maximum=4, target=4, delay=10)
    assert recommender.decide(0, 0, 0).replicas == 0
    # A request woke the model (or a person scaled it): not taken back at the next round,
    # when no request is yet counted.
    assert recommender.decide(2, 0, 1).replicas == 1
    assert recommender.decide(11, 0, 1).replicas == 1
    assert recommender.decide(13, 0, 1).replicas == 0
    # A count outside the bounds is brought inside them.
    assert recommender.decide(20, 0, 9).replicas == 4


def test_the_reason_says_what_the_load_asked_for() -> None:
    recommender = Recommender(minimum=0, maximum=2, target=4, delay=30)
    assert "9 requests" in recommender.decide(0, 9, 1).reason
    assert "capped at the maximum, 2" in recommender.decide(1, 9, 2).reason
    kept = recommender.decide(2, 0, 2)
    assert kept.replicas == 2 and "kept for the scale-down delay (30 s)" in kept.reason
    idle = recommender.decide(40, 0, 2)
    assert idle.replicas == 0 and "no requests for 30 s" in idle.reason


class FakeScale:
    """The ChatBot's scale subresource and status, as the API server keeps them."""

    def __init__(self, replicas: int = 0, fail: bool = False) -> None:
        self.count = replicas
        self.fail = fail
        self.sets: list[int] = []
        self.statuses: list[dict[str, Any]] = []

    async def replicas(self) -> int:
        return self.count

    async def scale(self, replicas: int) -> None:
        self.sets.append(replicas)
        self.count = replicas

    async def wake(self) -> bool:
        if self.fail:
            raise ScaleFailed(403, "forbidden")
        if self.count:
            return False
        await self.scale(1)
        return True

    async def report(self, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    async def aclose(self) -> None:
        return None


def autoscaler(scale: FakeScale, **settings: Any) -> Autoscaler:
    defaults: dict[str, Any] = {
        "enabled": True,
        "chatbot": "bot",
        "namespace": "ns",
        "min_replicas": 0,
        "max_replicas": 3,
        "target_in_flight": 2,
        "scale_down_delay_seconds": 0,
        "queue_timeout_seconds": 5,
    }
    scaler = Autoscaler(
        AutoscalingSettings(**(defaults | settings)),
        Router("http://bot-model:8000/v1"),
        InProcessStore(),
        GatewayMetrics.create(),
        target=scale,  # a fake with the same methods
        member="gateway-0",
    )
    return scaler


async def test_a_request_at_zero_replicas_wakes_the_model_and_goes_on_when_one_is_ready() -> None:
    scale = FakeScale(0)
    scaler = autoscaler(scale)
    held = asyncio.create_task(scaler.hold())
    await asyncio.sleep(0.05)
    assert not held.done()
    assert scale.sets == [1], "the held request did not wake the model"
    assert scaler.waiting == 1 and scaler.load() == 1
    scaler.router.update([REPLICA])
    await asyncio.wait_for(held, 1)
    assert scaler.waiting == 0
    assert scale.statuses[-1]["desiredReplicas"] == 1
    assert "a request arrived" in scale.statuses[-1]["reason"]


async def test_a_held_request_that_waits_too_long_gets_503_with_retry_after() -> None:
    scaler = autoscaler(FakeScale(0), queue_timeout_seconds=0.1)
    with pytest.raises(BackendUnavailable) as raised:
        await scaler.hold()
    assert raised.value.retry_after and raised.value.retry_after > 0
    assert "did not start within 0.1 s" in raised.value.message
    assert scaler.waiting == 0


async def test_a_full_queue_refuses_at_once_and_a_wake_that_fails_keeps_waiting() -> None:
    scale = FakeScale(0, fail=True)
    scaler = autoscaler(scale, queue_length=2)
    held = [asyncio.create_task(scaler.hold()) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(BackendUnavailable) as raised:
        await scaler.hold()
    assert "2 requests already wait" in raised.value.message
    # The wake was refused; the leader's next round scales on the load instead.
    assert scale.sets == []
    scale.fail = False
    decision = await scaler.tick()
    assert decision is not None and decision.replicas == 1 and scale.sets == [1]
    scaler.router.update([REPLICA])
    await asyncio.wait_for(asyncio.gather(*held), 1)


async def test_a_round_scales_on_the_load_in_flight_and_back_to_zero() -> None:
    scale = FakeScale(1)
    scaler = autoscaler(scale)
    scaler.router.update([REPLICA])
    for _ in range(7):
        scaler.router.acquire(REPLICA)
    decision = await scaler.tick()
    assert decision is not None and decision.replicas == 3 and scale.sets == [3]
    assert "capped at the maximum, 3" in scale.statuses[-1]["reason"]
    for _ in range(7):
        scaler.router.release(REPLICA)
    await scaler.tick()
    assert scale.sets == [3, 0]
    assert scaler.metrics.scale_events.labels("up")._value.get() == 1
    assert scaler.metrics.scale_events.labels("down")._value.get() == 1


async def test_a_gateway_that_does_not_lead_reports_its_load_and_sets_nothing() -> None:
    scale = FakeScale(1)
    scaler = autoscaler(scale)

    async def follower(member: str, load: int, ttl_seconds: float) -> tuple[int, bool]:
        return load + 7, False

    scaler.store.share_load = follower  # type: ignore[method-assign]
    assert await scaler.tick() is None
    assert scale.sets == [] and scale.statuses == []
    assert scaler.metrics.load._value.get() == 7


async def test_held_requests_go_on_through_the_service_once_it_takes_connections() -> None:
    # The cluster DNS may go on saying the headless name has no pod for seconds after the
    # first is Ready; the Service (kube-proxy) takes connections sooner.
    port = free_port()
    scale = FakeScale(0)
    scaler = autoscaler(scale)
    scaler.router = Router(f"http://127.0.0.1:{port}/v1")
    held = asyncio.create_task(scaler.hold())
    await asyncio.sleep(0.7)
    assert not held.done(), "went on before the Service took connections"
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", port)
    try:
        await asyncio.wait_for(held, 2)
        assert scaler.router.replicas == ()
        # Later requests of the same wake go on at once.
        await asyncio.wait_for(scaler.hold(), 0.5)
    finally:
        server.close()
        await scaler.aclose()


async def test_a_missing_token_is_a_scale_failure_the_rounds_outlive(tmp_path: Path) -> None:
    target = ScaleTarget(
        "bot",
        "ns",
        KubernetesSettings(api_url="https://127.0.0.1:1", token_file=tmp_path / "none"),
    )
    try:
        with pytest.raises(ScaleFailed) as raised:
            await target.replicas()
        assert "cannot read the API token" in str(raised.value)
    finally:
        await target.aclose()
    scale = FakeScale(1)
    scaler = autoscaler(scale, interval_seconds=0.01)
    rounds = 0

    async def broken() -> int:
        nonlocal rounds
        rounds += 1
        raise KeyError("spec")

    scale.replicas = broken  # type: ignore[method-assign]
    running = asyncio.create_task(scaler.run())
    await asyncio.sleep(0.1)
    assert not running.done() and rounds > 1, "an unexpected error stopped the autoscaler"
    running.cancel()


async def test_requests_through_the_service_or_on_a_replica_that_left_count_as_load() -> None:
    scaler = autoscaler(FakeScale(1))
    router = scaler.router
    # Held requests a scale from zero let go through the Service (its name resolved first).
    router.acquire(router.url)
    router.update([REPLICA])
    router.acquire(REPLICA)
    router.update([])  # the replica left with its request still streaming
    assert scaler.load() == 2
    router.release(REPLICA)
    router.release(router.url)
    assert scaler.load() == 0


async def test_a_wake_whose_patch_meets_a_status_write_reads_the_scale_again(
    tmp_path: Path,
) -> None:
    """The scale's patch holds only over the version read; the operator's status writes
    change that version every few seconds. A 409 is read again, not taken for another
    gateway's wake (which left the model at zero, the request waiting for nothing)."""
    token = tmp_path / "token"
    token.write_text("t")
    versions = iter(["1", "2"])
    calls: list[tuple[str, str]] = []

    def api(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, request.url.path.rsplit("/", 1)[-1]))
        if request.method == "GET":
            return httpx.Response(200, json={"metadata": {"resourceVersion": next(versions)}})
        sent = json.loads(request.content)["metadata"]["resourceVersion"]
        if sent == "1":  # a status write came between the read and the patch
            return httpx.Response(409, json={"message": "the object has been modified"})
        return httpx.Response(200, json={})

    target = ScaleTarget(
        "bot", "ns", KubernetesSettings(api_url="https://127.0.0.1:1", token_file=token)
    )
    await target.aclose()
    target._client = httpx.AsyncClient(
        base_url="https://127.0.0.1:1", transport=httpx.MockTransport(api)
    )
    try:
        assert await target.wake()
    finally:
        await target.aclose()
    assert calls == [("GET", "scale"), ("PATCH", "scale"), ("GET", "scale"), ("PATCH", "scale")]
