"""The gateway in front of three real llama.cpp replicas sharing a port on three addresses,
as a headless Service lists pods: each conversation's turns reach one replica, and a replica
killed mid-conversation hands the conversation on without a failed turn."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tertulia.gateway.pipeline.auth import ANONYMOUS
from tertulia.gateway.pipeline.memory import conversation_key
from tertulia.gateway.routing import Ring, replica_urls
from tests.testbed.process import ManagedProcess, free_port
from tests.testbed.servers import start_gateway, start_llama_server, start_redis

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
# llama-server writes a line as each task ends: a completion it answered.
COMPLETION = re.compile(r"\| stop processing:")


def served(replica: ManagedProcess) -> int:
    """Completions the replica has answered, as its log says."""
    return len(COMPLETION.findall(replica.log_path.read_text(errors="replace")))


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[dict[str, ManagedProcess], int]]:
    port = free_port()
    started = {
        address: start_llama_server(tmp_path / address, port=port, host=address)[0]
        for address in ADDRESSES
    }
    yield started, port
    for process in started.values():
        process.stop()


def test_each_conversation_stays_on_one_replica_and_a_killed_one_hands_it_on(
    tmp_path: Path, replicas: tuple[dict[str, ManagedProcess], int]
) -> None:
    servers, port = replicas
    redis, redis_url = start_redis(tmp_path / "redis")
    gateway, url = start_gateway(
        tmp_path,
        {
            "BACKEND__URL": f"http://{ADDRESSES[0]}:{port}/v1",
            "BACKEND__REPLICAS": ",".join(ADDRESSES),
            "BACKEND__REPLICAS_REFRESH_SECONDS": "0.5",
            "REDIS_URL": redis_url,
            "MAX_TOKENS": "4",
            "TEMPERATURE": "0",
            "RATE_LIMIT__ENABLED": "false",
        },
        name="routing-gateway",
    )
    try:

        def turn(conversation: str, index: int) -> tuple[int, str | None]:
            """Send one turn; its status and the replica that answered it."""
            before = {address: served(process) for address, process in servers.items()}
            body = {"message": f"turn {index}", "conversation_id": conversation}
            status = httpx.post(f"{url}/chat", json=body, timeout=120).status_code
            deadline = time.monotonic() + 5  # the access log line follows the answer
            while time.monotonic() < deadline:
                grew = [a for a, p in servers.items() if served(p) > before[a]]
                if grew or status != 200:
                    break
                time.sleep(0.05)
            assert len(grew) <= 1, grew
            return status, grew[0] if grew else None

        # Conversations of which each replica owns a few on the ring (the ring follows the
        # replicas' URLs, whose port is chosen per run; a conversation's place on it, its key
        # in memory, which holds the caller too).
        ring = Ring(replica_urls(f"http://{ADDRESSES[0]}:{port}/v1", list(ADDRESSES)))
        owned: dict[str, list[str]] = {}
        for candidate in (f"conversation-{index}" for index in range(1000)):
            key = conversation_key(ANONYMOUS, ANONYMOUS.name, candidate)
            owner = next(ring.order(key))
            if len(owned.setdefault(owner, [])) < 3:
                owned[owner].append(candidate)
        conversations = [name for names in owned.values() for name in names]
        assert len(conversations) == 9
        home: dict[str, set[str | None]] = {}
        for index in range(3):
            for conversation in conversations:
                status, replica = turn(conversation, index)
                assert status == 200
                home.setdefault(conversation, set()).add(replica)
        # Each conversation on one replica, all three used, none holding more than its bound
        # of the conversations (ceil(1.25 * 9 / 3)): its owner on the ring, or the next one
        # when the owner's share was full as the conversation began.
        assert all(len(used) == 1 for used in home.values()), home
        held = Counter(next(iter(used)) for used in home.values())
        assert max(held.values()) <= 4, home
        owners = {next(iter(used)) for used in home.values()}
        assert owners == set(ADDRESSES), home

        # The replica of the first conversation dies between its turns.
        conversation = conversations[0]
        victim = next(iter(home[conversation]))
        assert victim is not None
        servers.pop(victim).stop()
        status, replica = turn(conversation, 3)
        assert status == 200, "the turn after the kill failed"
        assert replica not in (None, victim)
        # It stays on its new replica, and the others' conversations did not move.
        assert turn(conversation, 4) == (200, replica)
        for other in conversations[1:]:
            if home[other] != {victim}:
                assert turn(other, 3) == (200, next(iter(home[other])))
        # The conversation kept its history across the move.
        history = httpx.get(f"{url}/conversations/{conversation}", timeout=10).json()["turns"]
        assert [t["content"] for t in history if t["role"] == "user"] == [
            f"turn {index}" for index in range(5)
        ]
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert re.search(r'tertulia_gateway_routed_total\{outcome="affinity"\} [1-9]', metrics)
        # The dead replica is still listed (addresses, not a Service that drops it): its
        # conversation went to its neighbour each time.
        assert "tertulia_gateway_backend_replicas 3.0" in metrics
        assert re.search(r'tertulia_gateway_routed_total\{outcome="neighbour"\} [1-9]', metrics)
    finally:
        gateway.stop()
        redis.stop()
