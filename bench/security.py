"""What an attacker's volume costs the gateway and its Redis.

1. Memory: ten concurrent requests without any API key, each sending a 32 MiB JSON body to
   the admin upload route, against a real gateway process: its resident memory before, at
   its peak while they run (sampled every 10 ms) and after. The gateway answers 401 from
   the headers and never reads the bodies, so the peak stays near idle (target: within
   50 MiB of it). The baseline in the same run is the same gateway idle, and an admin's one
   accepted 32 MiB upload (what the limit allows), for scale.
2. Event-claim flood: a real Redis with a memory limit and the operator's eviction policy,
   filled with conversations to near that limit, then a flood of unique event ids through
   the gateway's /events with one bot's key (its rate limit raised, so the flood reaches the
   cap). Figures: conversations lost (target 0), the claims kept (at most the cap), and
   Redis's memory against its limit.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import redis

from bench._report import figure, sized
from tertulia.gateway.store import CLAIMS_PREFIX, RedisStore, Turn, hashed_key
from tertulia.operator.render.memory import EVICTION_POLICY
from tests.testbed.servers import start_fake_backend, start_gateway, start_redis

MIB = 1024 * 1024
CONCURRENT = 10
# Quick mode reads 4 MiB bodies: parsing an admin's 32 MiB upload costs a core for seconds.
BODY_BYTES = sized(32 * MIB, 4 * MIB)
FLOOD = sized(50_000, 3_000)
CAP = sized(10_000, 500)
REDIS_LIMIT = sized(64 * MIB, 8 * MIB)


def resident(pid: int) -> int:
    """The process's resident memory in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class PeakSampler:
    """The highest resident memory of `pid`, sampled every 10 ms while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, resident(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, resident(self.pid))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def json_body(size: int) -> bytes:
    """A JSON upload of small objects, `size` bytes: what grew FastAPI's parser most."""
    item = json.dumps({"source": "a.md", "content": "x"}).encode() + b","
    count = (size - 40) // len(item)
    return b'{"documents":[' + item * count + b'{"source":"z.md","content":"z"}]}'


async def send_whole(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    """POST `body` over a raw connection, writing all of it unless the server closes first;
    the status it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(head.encode() + b"\r\n")
    # The answer is read as it comes: a server that answers before the body and closes
    # resets the connection, and a reply read only after the writes would be lost with it.
    answer = asyncio.ensure_future(reader.readline())
    view = memoryview(body)
    try:
        for start in range(0, len(body), MIB):
            if answer.done():
                break
            writer.write(view[start : start + MIB])
            await writer.drain()
    except (ConnectionError, OSError):
        pass  # answered and closed before the whole body went
    status_line = await answer
    writer.close()
    return int(status_line.split()[1])


def memory_under_unauthenticated_uploads(workdir: Path, backend: str) -> None:
    keys = workdir / "keys"
    keys.mkdir()
    admin_key = uuid.uuid4().hex
    (keys / "admin").write_text(admin_key)
    gateway, url = start_gateway(
        workdir,
        {
            "BACKEND__URL": backend,
            "API_KEYS_DIR": str(keys),
            # The knowledge base on, so the admin routes exist; its Weaviate is never reached
            # by these requests.
            "KNOWLEDGE_BASE__ENABLED": "true",
            "KNOWLEDGE_BASE__WEAVIATE_URL": "http://127.0.0.1:9",
        },
        name="gateway-memory",
    )
    port = int(url.rsplit(":", 1)[1])
    body = json_body(BODY_BYTES)
    try:
        httpx.get(f"{url}/healthz", timeout=10)
        time.sleep(1)
        idle = resident(gateway.pid)

        async def flood() -> list[int]:
            return await asyncio.gather(
                *(
                    send_whole(port, "/admin/knowledge/documents", body, {})
                    for _ in range(CONCURRENT)
                )
            )

        with PeakSampler(gateway.pid) as sampler:
            statuses = asyncio.run(flood())
        time.sleep(0.5)
        after = resident(gateway.pid)
        if set(statuses) != {401}:
            raise RuntimeError(f"unauthenticated uploads were answered {statuses}, not 401")
        # For scale: one admin upload of the same size is read (it is allowed) and parsed.
        with PeakSampler(gateway.pid) as admin:
            status = asyncio.run(
                send_whole(
                    port,
                    "/admin/knowledge/documents",
                    body,
                    {"Authorization": f"Bearer {admin_key}"},
                )
            )
        print(f"  admin's upload answered {status}")
    finally:
        gateway.stop()
    growth = (sampler.peak - idle) / MIB
    print(
        f"  idle {idle / MIB:.1f} MiB; {CONCURRENT} x {BODY_BYTES // MIB} MiB without a key: "
        f"peak {sampler.peak / MIB:.1f} MiB (+{growth:.1f}), after {after / MIB:.1f} MiB; "
        f"one admin upload: peak {admin.peak / MIB:.1f} MiB (+{(admin.peak - idle) / MIB:.1f})"
    )
    figure(
        "security",
        f"gateway RSS growth, {CONCURRENT} unauth {BODY_BYTES // MIB} MiB bodies",
        growth,
        "MiB",
        "<= 50",
        growth <= 50,
    )
    figure(
        "security",
        f"gateway RSS growth, one admin {BODY_BYTES // MIB} MiB upload",
        (admin.peak - idle) / MIB,
        "MiB",
    )


def claim_flood(workdir: Path, backend: str) -> None:
    process, redis_url = start_redis(
        workdir / "redis",
        options=["--maxmemory", str(REDIS_LIMIT), "--maxmemory-policy", EVICTION_POLICY],
    )
    client = redis.Redis.from_url(redis_url)
    keys = workdir / "flood-keys"
    keys.mkdir()
    (keys / "slack").write_text("flood-key")
    try:
        # Conversations up to about 85% of the limit, written as the gateway writes them.
        store = RedisStore(redis_url)
        conversations: list[str] = []

        async def fill() -> None:
            reply = "r" * 2000
            while int(client.info("memory")["used_memory"]) < REDIS_LIMIT * 0.85:
                batch = [hashed_key("bench:conversation", uuid.uuid4().hex) for _ in range(50)]
                for key in batch:
                    turns = [Turn(role="user", content="q"), Turn(role="assistant", content=reply)]
                    await store.append(key, turns, 40, 7 * 24 * 3600)
                conversations.extend(batch)
            await store.aclose()

        asyncio.run(fill())
        before = int(client.info("memory")["used_memory"])
        gateway, url = start_gateway(
            workdir,
            {
                "BACKEND__URL": backend,
                "REDIS_URL": redis_url,
                "API_KEYS_DIR": str(keys),
                "EVENTS__CLAIMS_PER_MINUTE": "100000000",
                "EVENTS__BURST": "100000000",
                "EVENTS__MAX_CLAIMS_PER_KEY": str(CAP),
            },
            name="gateway-flood",
        )
        started = time.monotonic()
        try:
            refused = asyncio.run(flood_events(url, FLOOD))
        finally:
            gateway.stop()
        seconds = time.monotonic() - started
        peak = int(client.info("memory")["used_memory_peak"])
        lost = sum(1 for key in conversations if client.llen(key) != 2)
        claims = client.zcard(hashed_key(CLAIMS_PREFIX, "slack"))
        evicted = int(client.info("stats")["evicted_keys"])
    finally:
        client.close()
        process.stop()
    print(
        f"  {len(conversations)} conversations filling {before / MIB:.1f} of "
        f"{REDIS_LIMIT / MIB:.0f} MiB; {FLOOD} unique event ids in {seconds:.1f} s "
        f"({refused} refused): claims kept {claims} (cap {CAP}), Redis peak "
        f"{peak / MIB:.1f} MiB, keys evicted {evicted}, conversations lost {lost}"
    )
    figure("security", "conversations lost to an event-id flood", lost, "", "0", lost == 0)
    figure("security", "event claims kept after the flood", claims, "", f"<= {CAP}", claims <= CAP)
    figure(
        "security",
        "Redis peak memory / its limit",
        peak / REDIS_LIMIT,
        "x",
        "< 1",
        peak < REDIS_LIMIT,
    )


async def flood_events(url: str, count: int) -> int:
    """Claim `count` unique event ids, 16 at a time; how many were refused."""
    refused = 0
    headers = {"Authorization": "Bearer flood-key"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        queue = iter(range(count))

        async def worker() -> None:
            nonlocal refused
            for number in queue:
                response = await client.post(
                    "/events", json={"id": f"slack:Ev{number:09d}", "ttl_seconds": 3600}
                )
                if response.status_code != 200:
                    refused += 1

        await asyncio.gather(*(worker() for _ in range(16)))
    return refused


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-security-") as tmp:
        workdir = Path(tmp)
        backend, backend_url = start_fake_backend(workdir)
        try:
            memory_under_unauthenticated_uploads(workdir, backend_url)
            claim_flood(workdir, backend_url)
        finally:
            backend.stop()
