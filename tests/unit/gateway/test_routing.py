"""Conversation-affinity routing: consistent hashing that moves only a joining or leaving
replica's conversations, bounded load, and the replicas a headless Service's name lists."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from pathlib import Path

import pytest

from tertulia.gateway import routing
from tertulia.gateway.routing import (
    Ring,
    Router,
    bounded_choice,
    follow_replicas,
    qualified,
    replica_urls,
    resolve,
)

KEYS = [f"conversation-{index}" for index in range(3000)]
THREE = ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1", "http://10.0.0.3:8000/v1"]
FOURTH = "http://10.0.0.4:8000/v1"


def owners(ring: Ring) -> dict[str, str]:
    return {key: next(ring.order(key)) for key in KEYS}


def test_every_replica_owns_about_an_even_share_of_the_conversations() -> None:
    shares = Counter(owners(Ring(THREE)).values())
    assert set(shares) == set(THREE)
    fair = len(KEYS) / len(THREE)
    assert all(0.8 * fair <= count <= 1.2 * fair for count in shares.values()), shares


def test_a_replica_that_joins_takes_conversations_only_from_the_others_and_about_its_share() -> (
    None
):
    before = owners(Ring(THREE))
    after = owners(Ring([*THREE, FOURTH]))
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved, "the new replica got nothing"
    assert all(after[key] == FOURTH for key in moved)
    assert 0.15 * len(KEYS) <= len(moved) <= 0.35 * len(KEYS), len(moved)


def test_a_replica_that_leaves_gives_away_only_its_own_conversations() -> None:
    before = owners(Ring([*THREE, FOURTH]))
    after = owners(Ring(THREE))
    for key in KEYS:
        if before[key] != FOURTH:
            assert after[key] == before[key], key
        else:
            assert after[key] in THREE


def test_a_keys_order_visits_every_replica_once_starting_with_its_owner() -> None:
    ring = Ring(THREE)
    for key in KEYS[:50]:
        order = list(ring.order(key))
        assert sorted(order) == sorted(THREE)
        assert order[0] == owners(ring)[key]
    assert list(Ring([]).order("any")) == []


def test_bounded_load_sends_a_conversation_past_a_replica_over_its_share() -> None:
    ring = Ring(THREE)
    key = KEYS[0]
    owner, neighbour, last = ring.order(key)
    # Even: the owner has room.
    assert bounded_choice(list(ring.order(key)), {}) == owner
    # 4 in flight on the owner, 0 elsewhere: with this one, 5 over 3 replicas is a cap of
    # ceil(1.25 * 5 / 3) = 3, which the owner is over; the next on the ring takes it.
    assert bounded_choice(list(ring.order(key)), {owner: 4}) == neighbour
    assert bounded_choice(list(ring.order(key)), {owner: 4, neighbour: 4}) == last
    # Within the bound the owner keeps it: 2 on the owner, 1 each elsewhere (cap 3).
    assert bounded_choice(list(ring.order(key)), {owner: 2, neighbour: 1, last: 1}) == owner


def test_a_replica_below_its_capacity_keeps_its_conversations_however_idle_the_others() -> None:
    ring = Ring(THREE)
    key = KEYS[0]
    owner, neighbour, _ = ring.order(key)
    order = list(ring.order(key))
    # One in flight on the owner and none elsewhere: 1.25 times the even share of 2 is a cap
    # of 1, which would send the turn away from the cache that holds its history.
    assert bounded_choice(order, {owner: 1}) == neighbour
    # A replica serving 4 at once without slowing keeps it, up to 4 in flight.
    assert bounded_choice(order, {owner: 1}, floor=4) == owner
    assert bounded_choice(order, {owner: 3}, floor=4) == owner
    assert bounded_choice(order, {owner: 4}, floor=4) == neighbour
    # Above the floor the share still bounds it: 9 on the owner, 3 on each other (cap 7).
    assert bounded_choice(order, {owner: 9, neighbour: 3, order[2]: 3}, floor=4) == neighbour


def test_a_turn_that_must_move_goes_where_the_conversation_went_last_not_round_the_ring() -> None:
    router = Router("http://model:8000/v1", capacity=1)
    router.update(THREE)
    home = router.pick("c1").url
    first, second = router.pick("c1").fallbacks
    # The home and the ring's next replica at their bound (3 each, none on the third: with
    # this one, a cap of ceil(1.25 * 7 / 3) = 3): the turn goes to the third.
    for replica in (home, home, home, first, first, first):
        router.acquire(replica)
    moved = router.pick("c1")
    assert (moved.url, moved.affinity) == (second, False)
    router.release(first)
    # The ring's next has room again, but the third holds the conversation's latest turn
    # away from home: the longest prefix outside it.
    again = router.pick("c1")
    assert (again.url, again.fallbacks) == (second, [home, first])
    for _ in range(3):
        router.release(home)
    assert router.pick("c1").url == home
    # A conversation that never moved tries the ring's order.
    fresh = Router("http://model:8000/v1")
    fresh.update(THREE)
    assert fresh.pick("c2").fallbacks == list(Ring(THREE).order("c2"))[1:]


def test_bounded_load_keeps_every_replica_within_its_bound_under_a_skewed_burst() -> None:
    ring = Ring(THREE)
    load: dict[str, int] = {}
    # Every request of the burst belongs to one conversation: a hot spot.
    for _ in range(300):
        chosen = bounded_choice(list(ring.order(KEYS[7])), load)
        load[chosen] = load.get(chosen, 0) + 1
    total = sum(load.values())
    assert max(load.values()) <= 1.25 * total / 3 + 1, load


def test_the_router_sends_a_conversation_to_one_replica_and_round_robin_spreads() -> None:
    router = Router("http://model:8000/v1")
    assert router.pick("c1").url == "http://model:8000/v1"  # no replicas known: the Service
    assert router.update(THREE)
    assert not router.update(list(reversed(THREE)))  # the same set
    picks = {router.pick("c1").url for _ in range(20)}
    assert len(picks) == 1
    assert router.pick("c1").affinity is True
    assert sorted([router.pick("c1").url, *router.pick("c1").fallbacks]) == sorted(THREE)
    spread = Router("http://model:8000/v1", "round-robin")
    spread.update(THREE)
    assert Counter(spread.pick("c1").url for _ in range(30)) == Counter(dict.fromkeys(THREE, 10))
    assert spread.pick("c1").affinity is None
    # Affinity routing without a key (no conversation) spreads too.
    assert len({router.pick(None).url for _ in range(3)}) == 3


def test_requests_in_flight_move_a_conversation_to_a_neighbour_and_back() -> None:
    router = Router("http://model:8000/v1")
    router.update(THREE)
    own = router.pick("c1").url
    for _ in range(4):
        router.acquire(own)
    moved = router.pick("c1")
    assert (moved.url != own, moved.affinity) == (True, False)
    for _ in range(4):
        router.release(own)
    assert router.pick("c1").url == own
    assert router.load(own) == 0


def test_replica_urls_keep_the_services_port_and_path() -> None:
    assert replica_urls("http://chat-model.ns.svc:8000/v1/", ["10.1.0.7", "fd00::5"]) == [
        "http://10.1.0.7:8000/v1",
        "http://[fd00::5]:8000/v1",
    ]
    assert replica_urls("http://model/v1", ["10.1.0.7"]) == ["http://10.1.0.7/v1"]


def test_a_name_without_addresses_is_no_replicas_and_a_failed_lookup_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop_errors = {
        "gone.svc": socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        "flaky.svc": socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
    }

    async def lookup(
        self: asyncio.AbstractEventLoop, host: str, port: object, **_: object
    ) -> list[tuple[object, ...]]:
        if host in loop_errors:
            raise loop_errors[host]
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))
            for address in ("10.1.0.9", "10.1.0.8", "10.1.0.9")
        ]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", lookup)
    assert asyncio.run(resolve("model-replicas.svc")) == ["10.1.0.8", "10.1.0.9"]
    assert asyncio.run(resolve("gone.svc")) == []
    with pytest.raises(socket.gaierror):
        asyncio.run(resolve("flaky.svc"))


def test_a_services_name_is_looked_up_absolute_in_the_pods_cluster_domain(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "search chat.svc.example.internal svc.example.internal example.internal\n"
        "nameserver 10.96.0.10\noptions ndots:5\n"
    )
    # Absolute: the resolver does not also try the bare name, which an air-gapped cluster's
    # DNS fails rather than answering that the Service has no ready pod.
    assert qualified("bot-model-replicas.chat.svc", resolv) == (
        "bot-model-replicas.chat.svc.example.internal."
    )
    assert qualified("10.0.0.7", resolv) == "10.0.0.7"
    assert qualified("model.example.com", resolv) == "model.example.com"
    # Outside a pod: as given.
    assert qualified("bot-model-replicas.chat.svc", tmp_path / "none") == (
        "bot-model-replicas.chat.svc"
    )


async def test_replicas_outlive_a_few_failed_lookups_but_not_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = Router("http://model:8000/v1")
    answers: list[list[str] | OSError] = [["10.1.0.8"], *[OSError("Temporary failure")] * 7]
    # The replicas known before each lookup: what the one before left.
    known: list[int] = []
    done = asyncio.Event()

    async def lookup(name: str) -> list[str]:
        known.append(len(router.replicas))
        if not answers:
            done.set()
            await asyncio.Event().wait()
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    monkeypatch.setattr(routing, "resolve", lookup)
    follower = asyncio.create_task(follow_replicas(router, "model-replicas", 0.001))
    await asyncio.wait_for(done.wait(), 5)
    follower.cancel()
    # Taken; kept through STALE_LOOKUPS - 1 failures in a row; forgotten at the next.
    stale = routing.STALE_LOOKUPS
    assert known == [0] + [1] * stale + [0] * (len(known) - 1 - stale), known
    assert not router.ready.is_set()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The routing module's monotonic clock, set by the test: `clock[0]`."""
    now = [1000.0]
    monkeypatch.setattr("tertulia.gateway.routing.time.monotonic", lambda: now[0])
    return now


def test_an_ejected_replica_is_left_out_until_its_time_is_up_or_it_is_no_longer_listed(
    clock: list[float],
) -> None:
    router = Router("http://model:8000/v1")
    router.update(THREE)
    router.eject(THREE[0], seconds=10)
    assert router.replicas == tuple(THREE[1:])
    # Still listed by the next lookups: still left out, for its time.
    clock[0] += 5
    router.update(THREE)
    assert THREE[0] not in router.replicas
    clock[0] += 6
    router.update(THREE)
    assert router.replicas == tuple(THREE)
    # Every replica left out: none ready, so a request waits (or goes to the Service).
    for replica in THREE:
        router.eject(replica)
    assert router.replicas == () and not router.ready.is_set()
    assert router.pick("key").url == "http://model:8000/v1"
    # A replica no longer listed is forgotten with its ejection; listed again, it is used.
    router.update([FOURTH])
    router.update([FOURTH, THREE[0]])
    assert router.replicas == tuple(sorted([FOURTH, THREE[0]])) and router.ready.is_set()


def test_conversations_stay_within_their_bound_per_replica_and_keep_their_replica() -> None:
    router = Router("http://model:8000/v1")
    router.update(THREE)
    keys = KEYS[:24]
    # The ring alone spreads these 24 unevenly (12, 5 and 7 in one benchmark's run).
    owned = Counter(next(Ring(THREE).order(key)) for key in keys)
    homes = {key: router.pick(key).url for key in keys}
    held = Counter(homes.values())
    assert max(held.values()) <= 10, held  # ceil(1.25 * 24 / 3)
    assert max(owned.values()) > max(held.values()), (owned, held)
    # Later turns go to the same replica, whatever each replica's conversations are now.
    for _ in range(3):
        for key in reversed(keys):
            assert router.pick(key).url == homes[key]


def test_a_joining_replica_takes_only_conversations_it_now_owns_and_a_leaving_one_its_own() -> None:
    router = Router("http://model:8000/v1")
    router.update(THREE)
    keys = KEYS[:60]
    before = {key: router.pick(key).url for key in keys}
    router.update([*THREE, FOURTH])
    after = {key: router.pick(key).url for key in keys}
    moved = {key for key in keys if after[key] != before[key]}
    assert moved and all(after[key] == FOURTH for key in moved)
    assert all(next(Ring([*THREE, FOURTH]).order(key)) == FOURTH for key in moved)
    router.update(THREE)
    again = {key: router.pick(key).url for key in keys}
    assert all(again[key] == after[key] for key in keys if after[key] != FOURTH)
    assert all(again[key] in THREE for key in moved)


def test_an_idle_conversation_no_longer_counts_on_its_replica(clock: list[float]) -> None:
    router = Router("http://model:8000/v1")
    router.update(THREE)
    home = router.pick("c1").url
    assert router.home("c1") == home
    clock[0] += routing.HOME_IDLE_SECONDS - 1
    router.pick("c2")
    assert router.home("c1") == home
    clock[0] += 2
    router.pick("c2")  # each pick lets the idle ones go
    assert router.home("c1") is None and router.home("c2") is not None
