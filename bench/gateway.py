"""The gateway's cost: latency it adds over calling the model server directly, and its
throughput, side by side with LiteLLM's proxy in front of the same backend, each with the
features a deployment turns on.

Tertulia's gateway runs as a ChatBot configures it by default: an API key, rate limits in
Redis, memory in Redis, blocked terms for moderation; and once more with the knowledge base
on (Weaviate and the embeddings server, real). Two paths:

- `/v1/chat/completions`, the OpenAI-compatible one (the client sends the conversation);
- `/chat`, the one the bots and the web chat use: the gateway remembers the conversation, so
  each request reads the history (up to the memory's token budget) and appends the new turn.
  The bench's conversations are long enough to fill that budget.

LiteLLM runs with its equivalents: a master key, a per-deployment rpm limit counted in Redis
(`usage-based-routing-v2`), and its content filter guardrail with the same blocked terms. It
has no memory, so its side of the `/chat` comparison sends the conversation the gateway
would have remembered in every request, as a client of it has to.

Every target runs one worker process pinned to CPU 1, and LiteLLM is stopped (SIGSTOP) while
another target is measured; the fake backend, Redis and the load generator (wrk)
share CPU 0, so each target competes for nothing but its own core. Failed requests are
counted by kind (HTTP status, or wrk's socket error) and listed after the table. Weaviate
and the embeddings server are not pinned: llama.cpp's threads pinned to one core wait on each
other (an embedding takes 1.2 s instead of 50 ms), so with the knowledge base on the figures
include the embedding's own time on either core.
Baselines from the same run: the backend called directly (latency: with one message for the
OpenAI path, and with the prompt the gateway sends for `/chat`, since reading a longer prompt
is the model server's time, which a client sending the conversation pays too) and LiteLLM
(throughput). At concurrency 1 the targets take turns, three short runs each, and each row
is their median: latency alone moves with the machine's moment.
Before timing, each target is shown to enforce what it claims: a blocked term is refused, and
its rate limit is counted in Redis.

With the knowledge base on, two rows: the same question each time (`/chat+kb`, whose
embedding the gateway keeps after the first), and a question never asked before each time
(`/chat+kb new`: every request is embedded). Beside them, the floor of retrieval from the same
run: the embeddings server alone (one question a request, and 32 in one) and Weaviate's hybrid
search alone (one at a time, and 32 at once), each with questions never asked before.

Targets: p50 added latency at concurrency 1 at most 1.5 ms on the OpenAI path and 2 ms on
`/chat`; at concurrency 32 and 256 `/chat` at least 10x LiteLLM's throughput and the OpenAI
path at least 2x; no errors over 256 concurrent streams. With the knowledge base: a question,
asked before or new, adds at most the embedding's own time (alone, in the same run) and 5 ms,
and at concurrency 32 `/chat+kb` serves at least 10x LiteLLM. (Quick mode stops at 8.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import redis

from bench._report import figure, sized
from tertulia.gateway.pipeline.memory import fit_history
from tertulia.gateway.settings import GatewaySettings
from tertulia.gateway.store import Turn
from tertulia.knowledge.settings import KnowledgeSettings
from tertulia.knowledge.store import Store
from tests.testbed.paths import cache_dir
from tests.testbed.process import ManagedProcess, free_port
from tests.testbed.servers import (
    EMBEDDING_MODEL_ALIAS,
    start_embedding_server,
    start_redis,
    start_weaviate,
)

REPO = Path(__file__).resolve().parents[1]
CACHE = cache_dir()
LITELLM_REQUIREMENTS = REPO / "bench" / "requirements-litellm.txt"
CORPUS = REPO / "bench" / "data" / "rag-corpus"
REPLY = " ".join(["token"] * 20)
# Both proxies check an API key, as they would in production; the backend ignores it.
API_KEY = "sk-bench-0123456789abcdef0123456789"
ADMIN_KEY = "sk-bench-admin-0123456789abcdef012345"
# A moderation list of the size a deployment might keep; none of it is in the questions.
BLOCKED_TERMS = [
    "contraband",
    "smuggling route",
    "forged manifest",
    "bribe the harbour master",
    "untaxed cargo",
    "stolen container",
]
# A question with some context, as users of a help desk write them (about 300 characters).
MESSAGE = (
    "We moved our berth booking from the old harbour office to the new portal last week, and "
    "since then the fee on the invoice for a two-night stay at the north pier looks higher "
    "than what the price list says. Could you explain how the berth fee is worked out, and "
    "whether the winter discount still applies to boats under twelve metres?"
)
# Concurrent conversations the /chat load spreads over; each fills its history at once.
CONVERSATIONS = 32
# Quick mode's second is enough for each path to answer a few dozen times (LiteLLM's too, at
# about 30 a second); each of its rounds saturates both cores for its whole duration.
DURATION_SECONDS = int(os.environ.get("BENCH_SECONDS", sized("10", "1")))
# Quick mode stops at 8: LiteLLM completes nothing within a second or two at 256, and the
# figures at 8 take the same code paths as those at 32.
CONCURRENCIES = sized((1, 32, 256), (1, 8))
# Turns each target takes at concurrency 1, sharing the run's duration (quick mode: one).
LATENCY_ROUNDS = sized(3, 1)
TOP = CONCURRENCIES[-1]
# Embedding every question on the CPU dominates with the knowledge base on: measured up to this.
KNOWLEDGE_CONCURRENCIES = CONCURRENCIES[:2]

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
local bodies = {%s}
-- With fresh questions, each request's "@@" becomes a number no request has had before.
local fresh = %s
local sent = 0
request = function()
  sent = sent + 1
  local body = bodies[sent %% #bodies + 1]
  if fresh then
    body = body:gsub("@@", "%s-" .. sent)
  end
  return wrk.format(nil, nil, nil, body)
end
-- Failed responses by status, printed at the end as "status <code> <count>" lines.
failed = {}
response = function(status, headers, body)
  if status > 299 then
    failed[status] = (failed[status] or 0) + 1
  end
end
local threads = {}
setup = function(thread)
  table.insert(threads, thread)
end
done = function(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("failed")) do
      io.write(string.format("status %%d %%d\\n", status, count))
    end
  end
end
"""


@dataclass(frozen=True)
class Run:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    # By kind: an HTTP status ("503"), or wrk's socket errors ("connect", "read", "timeout").
    failures: dict[str, int]

    @property
    def errors(self) -> int:
        return sum(self.failures.values())

    def describe_errors(self) -> str:
        return ", ".join(f"{kind}: {count}" for kind, count in sorted(self.failures.items()))


Body = dict[str, object]


@dataclass(frozen=True)
class Target:
    """One row of the table: a URL and the request bodies wrk sends it, in turn."""

    name: str
    url: str
    bodies: list[Body]
    concurrencies: tuple[int, ...] = CONCURRENCIES
    # The proxy behind `url` (none for the backend).
    proxy: ManagedProcess | None = None
    # Whether the proxy works while idle, and is stopped while another target is measured.
    busy_when_idle: bool = False
    # Whether each request asks a question never asked before ("@@" in a body is numbered).
    fresh: bool = False


def litellm_environment() -> Path:
    """LiteLLM in its own hash-checked environment, so its pins never touch Tertulia's."""
    version = re.search(
        r"litellm\[proxy\]==([\w.]+)", (REPO / "bench" / "requirements-litellm.in").read_text()
    )
    assert version is not None
    venv = CACHE / "bench" / f"litellm-{version.group(1)}"
    if not (venv / "bin" / "litellm").exists():
        uv = next((CACHE / "uv").glob("*/bin/uv"))
        subprocess.run([uv, "venv", "-q", "-p", sys.executable, venv], check=True)
        subprocess.run(
            [uv, "pip", "install", "-q", "--require-hashes", "-r", LITELLM_REQUIREMENTS],
            env={**os.environ, "VIRTUAL_ENV": str(venv)},
            check=True,
        )
    return venv


def wait_ready(process: ManagedProcess, url: str, timeout: float = 180.0) -> None:
    process.wait_until(
        lambda: urllib.request.urlopen(url, timeout=2).status < 500, timeout, "ready"
    )


def post(url: str, body: dict[str, object], key: str = API_KEY) -> tuple[int, str]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


_LONGEST_RETRY_SECONDS = 30


class _NothingCompleted(RuntimeError):
    pass


def wrk(target: Target, concurrency: int, workdir: Path, seconds: int = DURATION_SECONDS) -> Run:
    """One wrk run. A run too short to finish one request (a busy machine's moment: quick
    mode's rounds last a second) is run again four times as long, up to half a minute."""
    while True:
        try:
            return _wrk(target, concurrency, workdir, seconds)
        except _NothingCompleted:
            if seconds >= _LONGEST_RETRY_SECONDS:
                raise
            print(f"  {target.name}: no request completed in {seconds} s; again for longer")
            seconds = min(seconds * 4, _LONGEST_RETRY_SECONDS)


_wrk_runs = itertools.count()


def _wrk(target: Target, concurrency: int, workdir: Path, seconds: int) -> Run:
    script = workdir / "post.lua"
    bodies = ", ".join(f"[==[{json.dumps(body)}]==]" for body in target.bodies)
    fresh = "true" if target.fresh else "false"
    script.write_text(_WRK_SCRIPT % (API_KEY, bodies, fresh, next(_wrk_runs)))
    result = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            str(script),
            target.url,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    out = result.stdout

    def latency(percentile: str) -> float:
        found = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        assert found is not None, out
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
        return float(found.group(1)) * scale

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    failures = {
        status: int(count) for status, count in re.findall(r"^status (\d+) (\d+)$", out, re.M)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if (int(non_2xx.group(1)) if non_2xx else 0) != sum(failures.values()):
        raise RuntimeError(f"wrk's script did not count the failed responses:\n{out}")
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        kinds = ("connect", "read", "write", "timeout")
        failures |= {
            kind: int(count)
            for kind, count in zip(kinds, socket_errors.groups(), strict=True)
            if int(count)
        }
    assert rate is not None, out
    if float(rate.group(1)) == 0:
        raise _NothingCompleted(
            f"{target.url} completed no request in {seconds} s at concurrency {concurrency}"
        )
    return Run(float(rate.group(1)), latency("50"), latency("99"), failures)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as directory:
        workdir = Path(directory)
        processes: list[ManagedProcess] = []
        try:
            targets, parts = start_targets(workdir, processes)
            report(targets, parts, workdir)
        finally:
            for process in reversed(processes):
                process.stop()


@contextlib.contextmanager
def alone(target: Target, targets: list[Target]) -> Iterator[None]:
    """LiteLLM stopped (SIGSTOP) while another target is measured: it shares their core, and
    idle it is not idle (its background loops, health checks and spend updates). The
    gateways, idle, wait on their sockets; stopping them would cut the knowledge gateway's
    connection to Weaviate, which then skips the knowledge base for a while."""
    others = {
        other.proxy.pid
        for other in targets
        if other.proxy is not None and other.busy_when_idle and other.proxy is not target.proxy
    }
    for pid in others:
        os.killpg(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.killpg(pid, signal.SIGCONT)


def median_run(runs: list[Run]) -> Run:
    """Several runs of one target as one: median latencies, mean rate, every failure."""
    failures: dict[str, int] = {}
    for run in runs:
        for kind, count in run.failures.items():
            failures[kind] = failures.get(kind, 0) + count
    return Run(
        statistics.fmean(run.requests_per_second for run in runs),
        statistics.median(run.p50_ms for run in runs),
        statistics.median(run.p99_ms for run in runs),
        failures,
    )


def pinned(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command]


def remembered_conversation() -> list[dict[str, str]]:
    """What the gateway sends the model for the bench's conversations once their history is
    full: the turns within the memory's token budget, then the message. A LiteLLM client
    sends this itself."""
    settings = GatewaySettings()
    turns = [
        Turn(role=role, content=text)
        for _ in range(settings.memory.max_turns)
        for role, text in (("user", MESSAGE), ("assistant", REPLY))
    ]
    history = fit_history(turns, settings.memory.max_tokens)
    messages = [{"role": "system", "content": settings.system_prompt}]
    messages += [{"role": turn.role, "content": turn.content} for turn in history]
    return [*messages, {"role": "user", "content": MESSAGE}]


def start_gateway(
    workdir: Path,
    name: str,
    port: int,
    settings: dict[str, str],
    processes: list[ManagedProcess],
) -> tuple[str, ManagedProcess]:
    tertulia = str(Path(sys.executable).with_name("tertulia"))
    gateway = ManagedProcess(
        name,
        pinned(1, [tertulia, "gateway", "serve"]),
        workdir,
        {
            "TERTULIA_GATEWAY_PORT": str(port),
            "TERTULIA_GATEWAY_LOG_LEVEL": "warning",
            "TERTULIA_GATEWAY_SHUTDOWN__DRAIN_DELAY_SECONDS": "0",
            **{f"TERTULIA_GATEWAY_{key}": value for key, value in settings.items()},
        },
    ).start()
    processes.append(gateway)
    url = f"http://127.0.0.1:{port}"
    wait_ready(gateway, f"{url}/healthz")
    return url, gateway


@dataclass(frozen=True)
class Parts:
    """What the knowledge gateway's retrieval is made of, measured alone for its floor."""

    embeddings_url: str
    knowledge: KnowledgeSettings


@dataclass(frozen=True)
class Floor:
    embed_one_ms: float
    embed_batch_ms: float
    search_ms: float
    searches_per_second: float


# Questions embedded and searched alone, and batches of 32 embedded, for the floor's medians.
FLOOR_ROUNDS = sized(40, 8)
FLOOR_BATCHES = sized(10, 2)
FLOOR_BATCH = 32


def measure_floor(parts: Parts) -> Floor:
    """The embeddings server alone (one question a request, and 32), and Weaviate's hybrid
    search alone (one at a time, and 32 at once), each with questions never asked before:
    what retrieval costs before the gateway adds anything."""
    questions = (f"{MESSAGE} (floor {number})" for number in itertools.count())

    def embed(texts: list[str]) -> tuple[float, list[float]]:
        started = time.perf_counter()
        status, text = post(
            f"{parts.embeddings_url}/embeddings",
            {"model": EMBEDDING_MODEL_ALIAS, "input": texts},
            key="",
        )
        took = (time.perf_counter() - started) * 1000
        if status != 200:
            raise RuntimeError(f"the embeddings server answered {status}: {text[:200]}")
        return took, json.loads(text)["data"][0]["embedding"]

    one = [embed([next(questions)]) for _ in range(FLOOR_ROUNDS)]
    batch = [embed([next(questions) for _ in range(FLOOR_BATCH)])[0] for _ in range(FLOOR_BATCHES)]
    vectors = [vector for _, vector in one]

    async def search() -> tuple[list[float], float]:
        store = Store(parts.knowledge)
        try:
            await store.ready()

            async def timed(vector: list[float]) -> float:
                started = time.perf_counter()
                await store.search(
                    MESSAGE, vector, limit=parts.knowledge.top_k, alpha=parts.knowledge.alpha
                )
                return (time.perf_counter() - started) * 1000

            alone = [await timed(vector) for vector in vectors]
            started = time.perf_counter()
            for _ in range(FLOOR_ROUNDS // 4 or 1):
                await asyncio.gather(*(timed(vector) for vector in vectors[:FLOOR_BATCH]))
            rate = (FLOOR_ROUNDS // 4 or 1) * min(FLOOR_BATCH, len(vectors))
            return alone, rate / (time.perf_counter() - started)
        finally:
            await store.aclose()

    searches, rate = asyncio.run(search())
    return Floor(
        statistics.median(took for took, _ in one),
        statistics.median(batch),
        statistics.median(searches),
        rate,
    )


def start_targets(workdir: Path, processes: list[ManagedProcess]) -> tuple[list[Target], Parts]:
    env = {"PYTHONPATH": str(REPO)}
    backend_port = free_port()
    backend = ManagedProcess(
        "fake-backend",
        pinned(
            0,
            [
                sys.executable,
                "-m",
                "tests.fakes.openai_backend",
                "--port",
                str(backend_port),
                "--reply",
                REPLY,
            ],
        ),
        workdir,
        env,
    ).start()
    processes.append(backend)
    backend_url = f"http://127.0.0.1:{backend_port}/v1"
    wait_ready(backend, f"{backend_url}/models")
    redis_process, redis_url = start_redis(workdir / "redis")
    processes.append(redis_process)
    subprocess.run(["taskset", "-p", "-c", "0", str(redis_process.pid)], check=True, stdout=-3)

    keys = workdir / "api-keys"
    keys.mkdir()
    (keys / "bench").write_text(API_KEY)
    (keys / "admin").write_text(ADMIN_KEY)
    unlimited = str(10**9)
    features = {
        "BACKEND__URL": backend_url,
        "BACKEND__MODEL": "fake-model",
        "API_KEYS_DIR": str(keys),
        "REDIS_URL": redis_url,
        # On, and counted in Redis on every request, but never refusing the bench's load.
        "RATE_LIMIT__ENABLED": "true",
        "RATE_LIMIT__REQUESTS_PER_MINUTE": unlimited,
        "RATE_LIMIT__BURST": unlimited,
        "RATE_LIMIT__KEY_REQUESTS_PER_MINUTE": unlimited,
        "RATE_LIMIT__KEY_BURST": unlimited,
        "MODERATION__BLOCKED_TERMS": json.dumps(BLOCKED_TERMS),
    }
    litellm, litellm_process = start_litellm(workdir, backend_url, redis_url, processes)
    gateway, gateway_process = start_gateway(workdir, "gateway", free_port(), features, processes)
    knowledge, knowledge_process, parts = start_knowledge_gateway(workdir, features, processes)
    wait_ready(litellm_process, f"{litellm}/health/liveliness")
    conversation = remembered_conversation()
    single: list[Body] = [
        {"model": "fake-model", "messages": [{"role": "user", "content": MESSAGE}]}
    ]
    chats: list[Body] = [
        {"message": MESSAGE, "conversation_id": f"bench-{number}"}
        for number in range(CONVERSATIONS)
    ]
    targets = [
        Target("backend (direct)", f"{backend_url}/chat/completions", single),
        # The prompt the gateway sends on /chat: the baseline of its added latency (reading a
        # longer prompt is the model server's time, which a client sending it pays too).
        Target(
            "backend history",
            f"{backend_url}/chat/completions",
            [{"model": "fake-model", "messages": conversation}],
            (1,),
        ),
        Target("tertulia /v1", f"{gateway}/v1/chat/completions", single, proxy=gateway_process),
        Target(
            "litellm /v1",
            f"{litellm}/v1/chat/completions",
            single,
            proxy=litellm_process,
            busy_when_idle=True,
        ),
        Target("tertulia /chat", f"{gateway}/chat", chats, proxy=gateway_process),
        # The same question each time, as on main: after the first, its embedding is kept.
        Target(
            "tertulia /chat+kb",
            f"{knowledge}/chat",
            [{**chat, "conversation_id": f"kb-{chat['conversation_id']}"} for chat in chats],
            KNOWLEDGE_CONCURRENCIES,
            proxy=knowledge_process,
        ),
        # A question never asked before each time: every one is embedded.
        Target(
            "tertulia /chat+kb new",
            f"{knowledge}/chat",
            [
                {
                    **chat,
                    "message": f"{MESSAGE} (ticket @@)",
                    "conversation_id": f"new-{chat['conversation_id']}",
                }
                for chat in chats
            ],
            KNOWLEDGE_CONCURRENCIES,
            proxy=knowledge_process,
            fresh=True,
        ),
        Target(
            "litellm history",
            f"{litellm}/v1/chat/completions",
            [{"model": "fake-model", "messages": conversation}],
            proxy=litellm_process,
            busy_when_idle=True,
        ),
    ]
    check_features(targets, redis_url)
    return targets, parts


def start_knowledge_gateway(
    workdir: Path, features: dict[str, str], processes: list[ManagedProcess]
) -> tuple[str, ManagedProcess, Parts]:
    """The same gateway with the knowledge base on, holding the frozen documentation corpus."""
    weaviate_process, weaviate = start_weaviate(workdir / "weaviate")
    processes.append(weaviate_process)
    embeddings_process, embeddings_url = start_embedding_server(workdir / "embeddings")
    processes.append(embeddings_process)
    weaviate_key = workdir / "weaviate-key"
    weaviate_key.write_text(weaviate.api_key)
    url, gateway = start_gateway(
        workdir,
        "gateway-knowledge",
        free_port(),
        {
            **features,
            "KNOWLEDGE_BASE__ENABLED": "true",
            "KNOWLEDGE_BASE__WEAVIATE_URL": weaviate.url,
            "KNOWLEDGE_BASE__GRPC_PORT": str(weaviate.grpc_port),
            "KNOWLEDGE_BASE__API_KEY_FILE": str(weaviate_key),
            "KNOWLEDGE_BASE__COLLECTION": "BenchCorpus",
            "KNOWLEDGE_BASE__EMBEDDING__URL": embeddings_url,
        },
        processes,
    )
    paths = [CORPUS / "README.md", *sorted((CORPUS / "docs").glob("*.md"))]
    documents = [
        {"source": path.relative_to(CORPUS).as_posix(), "content": path.read_text()}
        for path in paths
    ]
    status, text = post(f"{url}/admin/knowledge/documents", {"documents": documents}, ADMIN_KEY)
    if status != 200:
        raise RuntimeError(f"ingesting the corpus failed: {status} {text}")
    knowledge = KnowledgeSettings(
        weaviate_url=weaviate.url,
        grpc_port=weaviate.grpc_port,
        api_key_file=weaviate_key,
        collection="BenchCorpus",
    )
    return url, gateway, Parts(embeddings_url, knowledge)


def start_litellm(
    workdir: Path, backend_url: str, redis_url: str, processes: list[ManagedProcess]
) -> tuple[str, ManagedProcess]:
    """LiteLLM's proxy, started: the caller waits for it to be ready (it takes half a minute
    to import, spent while the gateways start)."""
    port = free_port()
    redis_port = redis_url.rsplit(":", 1)[1].split("/")[0]
    config = workdir / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "fake-model",
                        "litellm_params": {
                            "model": "openai/fake-model",
                            "api_base": backend_url,
                            "api_key": "unused",
                            "rpm": 10**9,
                        },
                    }
                ],
                # Its rpm limits, counted in Redis so that every replica shares them.
                "router_settings": {
                    "routing_strategy": "usage-based-routing-v2",
                    "redis_host": "127.0.0.1",
                    "redis_port": int(redis_port),
                },
                "guardrails": [
                    {
                        "guardrail_name": "blocked-terms",
                        "litellm_params": {
                            "guardrail": "litellm_content_filter",
                            "mode": "pre_call",
                            "default_on": True,
                            "blocked_words": [
                                {"keyword": term, "action": "BLOCK"} for term in BLOCKED_TERMS
                            ],
                        },
                    }
                ],
                "litellm_settings": {"telemetry": False, "drop_params": True},
            }
        )
    )
    venv = litellm_environment()
    litellm = ManagedProcess(
        "litellm",
        pinned(
            1,
            [
                str(venv / "bin" / "litellm"),
                "--config",
                str(config),
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
        ),
        workdir,
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MASTER_KEY": API_KEY,
        },
    ).start()
    processes.append(litellm)
    return f"http://127.0.0.1:{port}", litellm


def check_features(targets: list[Target], redis_url: str) -> None:
    """Each proxy answers, refuses a blocked term, refuses a wrong key, and counts its rate
    limit in Redis: the figures are for the features on, not for a bare proxy."""
    blocked = f"Where is the {BLOCKED_TERMS[1]} this week?"
    for target in targets:
        if target.proxy is None:  # the backend itself
            continue
        body = target.bodies[0]
        status, text = post(target.url, body)
        if status != 200:
            raise RuntimeError(f"{target.name}: {status} {text}")
        if "message" in body:
            refused = {**body, "message": blocked}
        else:
            messages = list(body["messages"])  # type: ignore[call-overload]
            refused = {**body, "messages": [*messages[:-1], {"role": "user", "content": blocked}]}
        status, text = post(target.url, refused)
        if status != 400:
            raise RuntimeError(f"{target.name} did not refuse a blocked term: {status} {text}")
        # LiteLLM without its database answers 400 "No connected db." to any other key.
        status, text = post(target.url, body, key="sk-wrong")
        if status not in (400, 401):
            raise RuntimeError(f"{target.name} took a wrong API key: {status} {text}")
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        names = {key.decode() for key in client.scan_iter(count=1000)}
        gateway = any(name.startswith("tertulia:rate:") for name in names)
        litellm = any(":rpm:" in name for name in names)
        if gateway and litellm:
            return
        time.sleep(0.5)
    raise RuntimeError(f"rate limits not counted in Redis (tertulia {gateway}, litellm {litellm})")


def report(targets: list[Target], parts: Parts, workdir: Path) -> None:
    by_name = {target.name: target for target in targets}
    with alone(by_name["tertulia /chat+kb"], targets):
        floor = measure_floor(parts)
    print(
        f"the floor of retrieval, its parts alone: embedding one question p50 "
        f"{floor.embed_one_ms:.2f} ms, {FLOOR_BATCH} in one request p50 "
        f"{floor.embed_batch_ms:.2f} ms; hybrid search p50 {floor.search_ms:.2f} ms, "
        f"{floor.searches_per_second:.0f} searches/s at {FLOOR_BATCH}\n"
    )
    results: dict[tuple[str, int], Run] = {}
    failed: list[str] = []

    def show(target: Target, concurrency: int, run: Run) -> None:
        print(
            f"{target.name:<18} {concurrency:>5} {run.requests_per_second:>9.0f} "
            f"{run.p50_ms:>8.2f} {run.p99_ms:>8.2f} {run.errors:>7}",
            flush=True,
        )
        if run.errors:
            failed.append(f"{target.name} at {concurrency}: {run.describe_errors()}")

    def measure(target: Target, concurrency: int) -> Run:
        with alone(target, targets):
            run = wrk(target, concurrency, workdir)
        show(target, concurrency, run)
        return run

    print(f"{'target':<18} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    # Latency alone at concurrency 1 moves with the machine's moment: the targets take turns,
    # a few short runs each, and each row is their median.
    rounds: dict[str, list[Run]] = {}
    for _ in range(LATENCY_ROUNDS):
        for target in targets:
            with alone(target, targets):
                run = wrk(target, 1, workdir, max(1, DURATION_SECONDS // LATENCY_ROUNDS))
            rounds.setdefault(target.name, []).append(run)
    for target in targets:
        run = results[target.name, 1] = median_run(rounds[target.name])
        show(target, 1, run)
    for concurrency in CONCURRENCIES[1:]:
        for target in targets:
            if concurrency in target.concurrencies:
                results[target.name, concurrency] = measure(target, concurrency)
    # The knowledge base answered throughout: its rows are of searches, not of their skipping.
    knowledge = by_name["tertulia /chat+kb"]
    status, text = post(knowledge.url, knowledge.bodies[0])
    if status != 200 or not json.loads(text)["sources"]:
        raise RuntimeError(f"the knowledge gateway answered without sources: {status} {text}")
    streams = {
        "tertulia /v1": {**by_name["tertulia /v1"].bodies[0], "stream": True},
        "tertulia /chat": by_name["tertulia /chat"].bodies[0],
    }
    stream_errors = 0
    for name, body in streams.items():
        target = by_name[name]
        url = target.url + ("/stream" if name.endswith("/chat") else "")
        stream = measure(replace(target, name=f"{name} stream", url=url, bodies=[body]), TOP)
        stream_errors += stream.errors
    for line in failed:
        print(f"errors of {line}")
    if failed:
        # What the gateways counted as failures upstream, by kind, to tell them apart.
        gateways = {
            target.url.split("/", 3)[2] for target in targets if target.name.startswith("tertulia")
        }
        for gateway in sorted(gateways):
            with urllib.request.urlopen(f"http://{gateway}/metrics", timeout=10) as response:
                text = response.read().decode()
            counted = re.findall(
                r'^tertulia_gateway_backend_errors_total\{kind="(\w+)"\} (\S+)$', text, re.M
            )
            print(f"upstream failures counted by the gateway at {gateway}: {counted or 'none'}")

    print()
    added: dict[str, float] = {}
    for name, baseline, limit in (
        ("tertulia /v1", "backend (direct)", 1.5),
        ("tertulia /chat", "backend history", 2.0),
        ("tertulia /chat+kb", "backend history", 0),
        ("tertulia /chat+kb new", "backend history", 0),
    ):
        run, direct = results[name, 1], results[baseline, 1]
        added[name] = run.p50_ms - direct.p50_ms
        wanted = f" (target <= {limit})" if limit else ""
        print(
            f"{name}: added latency at concurrency 1 over {baseline}: p50 {added[name]:.2f} ms"
            f"{wanted}, p99 {run.p99_ms - direct.p99_ms:.2f} ms"
        )
    pairs = {
        "tertulia /v1": "litellm /v1",
        "tertulia /chat": "litellm history",
        "tertulia /chat+kb": "litellm history",
        "tertulia /chat+kb new": "litellm history",
    }
    ratios: dict[tuple[str, int], float] = {}
    for mine, theirs in pairs.items():
        for concurrency in by_name[mine].concurrencies:
            ratio = (
                results[mine, concurrency].requests_per_second
                / results[theirs, concurrency].requests_per_second
            )
            ratios[mine, concurrency] = ratio
            print(f"{mine} throughput vs {theirs} at concurrency {concurrency}: {ratio:.1f}x")
    print(f"errors over {TOP} concurrent streams: {stream_errors} (target 0)")

    at_target = TOP == 256
    v1, chat = added["tertulia /v1"], added["tertulia /chat"]
    figure("gateway", "/v1 added p50 at concurrency 1", v1, "ms", "<= 1.5", v1 <= 1.5)
    figure("gateway", "/chat added p50 at concurrency 1", chat, "ms", "<= 2", chat <= 2)
    # Retrieval at its floor: a question costs the gateway what embedding it costs the
    # embeddings server alone, and 5 ms more at most (the search, the memory, the rest); a
    # question asked again costs no embedding.
    embed_one, fresh = floor.embed_one_ms, added["tertulia /chat+kb new"]
    figure("gateway", "embedding one question alone (p50)", embed_one, "ms")
    figure("gateway", f"embedding {FLOOR_BATCH} questions in one request (p50)",
           floor.embed_batch_ms, "ms")  # fmt: skip
    figure("gateway", "hybrid search alone (p50)", floor.search_ms, "ms")
    for name, value in (
        ("/chat+kb added p50 at concurrency 1", added["tertulia /chat+kb"]),
        ("/chat+kb new question added p50 at conc. 1", fresh),
    ):
        figure("gateway", name, value, "ms", f"<= {embed_one + 5:.1f}", value <= embed_one + 5)
    for name in ("tertulia /chat+kb", "tertulia /chat+kb new"):
        ratio = ratios[name, KNOWLEDGE_CONCURRENCIES[-1]]
        repeated = name == "tertulia /chat+kb"
        targeted = at_target and repeated
        figure(
            "gateway",
            f"{name.removeprefix('tertulia ')} throughput vs LiteLLM at "
            f"{KNOWLEDGE_CONCURRENCIES[-1]}",
            ratio,
            "x",
            ">= 10" if targeted else "",
            ratio >= 10 if targeted else None,
        )
    for concurrency in CONCURRENCIES[1:]:
        at = at_target or None
        ratio = ratios["tertulia /chat", concurrency]
        figure(
            "gateway",
            f"/chat throughput against LiteLLM at {concurrency}",
            ratio,
            "x",
            ">= 10" if at else "",
            ratio >= 10 if at else None,
        )
    ratio = ratios["tertulia /v1", TOP]
    figure(
        "gateway",
        f"/v1 throughput against LiteLLM at {TOP}",
        ratio,
        "x",
        ">= 2" if at_target else "",
        ratio >= 2 if at_target else None,
    )
    figure("gateway", f"errors over {TOP} streams", stream_errors, "", "0", stream_errors == 0)


if __name__ == "__main__":
    main()
