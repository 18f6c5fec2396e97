"""Attacks with a bot's key on the event claims (/events), against a real gateway and a real
Redis: claims live in keys Redis never evicts, so a flood of unique event ids must neither
grow them without bound nor crowd out the conversations."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import redis

from tertulia.gateway.store import CLAIMS_PREFIX, RedisStore, Turn, hashed_key
from tertulia.operator.render.memory import EVICTION_POLICY
from tests.testbed.process import ManagedProcess
from tests.testbed.servers import start_gateway, start_redis

KEYS = {"slack": "slack-key-0123456789", "telegram": "telegram-key-0123456789"}


def keys_folder(workdir: Path) -> Path:
    folder = workdir / "keys"
    folder.mkdir(parents=True, exist_ok=True)
    for identity, key in KEYS.items():
        (folder / identity).write_text(key)
    return folder


def bearer(identity: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[identity]}"}


def claims_gateway(
    workdir: Path, backend: str, redis_url: str, **settings: str
) -> tuple[ManagedProcess, str]:
    """A gateway with the bots' keys on `redis_url`; `settings` are its EVENTS__ settings."""
    return start_gateway(
        workdir,
        {
            "BACKEND__URL": backend,
            "REDIS_URL": redis_url,
            "API_KEYS_DIR": str(keys_folder(workdir)),
            **{f"EVENTS__{name.upper()}": value for name, value in settings.items()},
        },
    )


def test_a_flood_of_claims_from_one_key_is_refused_past_its_burst(
    tmp_path: Path, llama_url: str, redis_url: str
) -> None:
    process, url = claims_gateway(tmp_path, llama_url, redis_url, burst="20", claims_per_minute="6")
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            answers = [
                client.post(
                    "/events", json={"id": f"slack:{uuid.uuid4()}"}, headers=bearer("slack")
                )
                for _ in range(30)
            ]
            # Another key's claims are its own: the flood did not spend them.
            other = client.post(
                "/events", json={"id": f"telegram:{uuid.uuid4()}"}, headers=bearer("telegram")
            )
    finally:
        process.stop()
    statuses = [answer.status_code for answer in answers]
    assert statuses[:20] == [200] * 20
    assert set(statuses[20:]) == {429}
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 10
    assert other.status_code == 200 and other.json() == {"first": True}


def test_a_claim_stands_an_hour_at_most(tmp_path: Path, llama_url: str) -> None:
    process, url = start_gateway(
        tmp_path, {"BACKEND__URL": llama_url, "API_KEYS_DIR": str(keys_folder(tmp_path))}
    )
    try:
        day = httpx.post(
            f"{url}/events",
            json={"id": "slack:Ev1", "ttl_seconds": 86_400},
            headers=bearer("slack"),
            timeout=10,
        )
    finally:
        process.stop()
    assert day.status_code == 422
    assert "ttl_seconds" in day.json()["error"]["message"]


def test_a_flood_at_redis_memory_limit_leaves_every_conversation_intact(
    tmp_path: Path, llama_url: str
) -> None:
    """Redis at its memory limit with conversations, then 8,000 unique event ids from one
    bot's key (its rate limit raised, so the flood reaches the store): the key's claims stop
    at their cap, and no conversation was evicted to make room for them."""
    limit, cap = 8 * 1024 * 1024, 300
    process, redis_url = start_redis(
        tmp_path / "redis",
        options=["--maxmemory", str(limit), "--maxmemory-policy", EVICTION_POLICY],
    )
    client = redis.Redis.from_url(redis_url)
    conversations: list[str] = []

    async def fill() -> None:
        # Conversations as the gateway writes them, until Redis is within 1 MiB of its limit:
        # the gateway's connections take about 600 KiB of it, and 8,000 claims unbounded
        # (about 130 bytes each) more than the rest.
        store = RedisStore(redis_url)
        reply = "r" * 1000
        try:
            while int(client.info("memory")["used_memory"]) < limit - 1024 * 1024:
                key = hashed_key("tertulia:conversation", uuid.uuid4().hex)
                turns = [Turn(role="user", content="q"), Turn(role="assistant", content=reply)]
                await store.append(key, turns, 40, 7 * 24 * 3600)
                conversations.append(key)
        finally:
            await store.aclose()

    try:
        asyncio.run(fill())
        assert int(client.info("stats")["evicted_keys"]) == 0
        gateway, url = claims_gateway(
            tmp_path,
            llama_url,
            redis_url,
            burst="1000000",
            claims_per_minute="1000000",
            max_claims_per_key=str(cap),
        )
        try:
            statuses = asyncio.run(flood(url, 8000))
        finally:
            gateway.stop()
        assert statuses == {200}
        lost = [key for key in conversations if client.llen(key) != 2]
        assert not lost, f"{len(lost)} of {len(conversations)} conversations evicted"
        assert int(client.info("stats")["evicted_keys"]) == 0
        assert client.zcard(hashed_key(CLAIMS_PREFIX, "slack")) == cap
    finally:
        client.close()
        process.stop()


async def flood(url: str, count: int) -> set[int]:
    statuses: set[int] = set()
    numbers = iter(range(count))
    async with httpx.AsyncClient(base_url=url, headers=bearer("slack"), timeout=30) as client:

        async def worker() -> None:
            for number in numbers:
                answer = await client.post("/events", json={"id": f"slack:Ev{number:08d}"})
                statuses.add(answer.status_code)

        await asyncio.gather(*(worker() for _ in range(8)))
    return statuses


def test_claims_of_one_key_never_answer_for_another(
    tmp_path: Path, llama_url: str, redis_url: str
) -> None:
    process, url = claims_gateway(tmp_path, llama_url, redis_url)
    event = {"id": f"slack:{uuid.uuid4()}"}
    try:
        first = httpx.post(f"{url}/events", json=event, headers=bearer("slack"), timeout=10)
        again = httpx.post(f"{url}/events", json=event, headers=bearer("slack"), timeout=10)
        other = httpx.post(f"{url}/events", json=event, headers=bearer("telegram"), timeout=10)
    finally:
        process.stop()
    assert (first.json(), again.json(), other.json()) == (
        {"first": True},
        {"first": False},
        {"first": True},
    )
