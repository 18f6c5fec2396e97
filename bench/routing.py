"""Conversation-affinity routing against round-robin, in one run: three llama.cpp replicas
(llama-server with the operator's arguments and a 16k context, Gemma 3 270M, a thread each)
on three addresses sharing a port, as a headless Service lists pods, behind the gateway;
concurrent multi-turn conversations whose history grows past 1,500 tokens, each turn
streamed through /chat/stream. Their users read each answer and write the next message for a
while (a minute on average), as people in a chat do, and arrive spread over that minute: the
replicas are loaded, not flooded. Without that pause each conversation sends its next turn the
moment an answer ends, every replica's queue stays full, and time to first token measures the
queue (by Little's law, conversations over throughput) rather than the work a cached prefix
saves; the run prints the requests served a second, which in a saturated run is all the
replicas can do, to show which it measured.

Each routing gets fresh replicas (empty caches) and conversations of its own, and the pair is
run three times (the same texts and the same user pauses each time), so that a figure is
read with its spread: each is the median of the runs, with their least and most, and a target
is met only when every run meets it. Figures, from turn 4 on: time to first token and total
time, p50 and p95, for each routing; the ratio of their TTFT p50 (target: round-robin's at
least 3x affinity's); the prompt tokens the replicas computed (a prefix found in a slot or the
prompt cache is not computed again); the busiest replica's share of the requests against a
fair share (target: at most 1.5x); and the share of affinity's turns that went to their
conversation's own replica (target: at least 95%).
"""

from __future__ import annotations

import random
import re
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench._report import figure, sized
from tests.testbed.process import ManagedProcess, free_port
from tests.testbed.servers import (
    LLAMA_MODEL_ALIAS,
    gemma_model_path,
    start_gateway,
    start_llama_cpp,
    start_redis,
)

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
CONVERSATIONS = sized(24, 3)
TURNS = sized(6, 4)
# Words of each user message (about 1.4 tokens a word with Gemma's tokenizer): the history
# passes 1,500 tokens by the fifth turn.
WORDS = sized(240, 20)
FROM_TURN = 4  # turns before this one warm the caches and are not counted
ANSWER_TOKENS = 16
# Seconds a user takes to read an answer and write the next message, on average (each pause
# drawn between half and one and a half times it, the same draws for both routings).
THINK_SECONDS = sized(60.0, 0.5)
# Each replica's context: its slots share one KV pool (llama.cpp's unified KV), which must
# hold the conversations in its slots at once (spec.model.maxModelLen renders --ctx-size).
CONTEXT = 16384
# Three replicas share this machine's cores: one thread each, as a pod would have its own
# CPUs, rather than every replica spinning a thread per core of all of them.
THREADS = 1
TTFT_TARGET = 3.0
SHARE_TARGET = 1.5
HOME_TARGET = 0.95
RUNS = sized(3, 1)
VOCABULARY = [
    *("harbour", "tide", "ferry", "berth", "lighthouse", "quay", "market", "morning"),
    *("anchor", "rope", "sail", "keeper", "north", "south", "island", "boat", "fish"),
    *("crane", "cargo", "pier", "storm", "harbourmaster", "ticket", "schedule", "wind"),
]


@dataclass(frozen=True)
class Turn:
    conversation: int
    index: int
    sent: float  # time.monotonic() as it was sent
    first_token: float
    total: float


def message(rng: random.Random, conversation: int, turn: int) -> str:
    words = " ".join(rng.choice(VOCABULARY) for _ in range(WORDS))
    return f"Conversation {conversation}, note {turn}: {words}. Say one thing about it."


def stream_turn(url: str, conversation: str, text: str) -> tuple[float, float]:
    """One turn through /chat/stream: seconds to its first token, and to its end."""
    started = time.monotonic()
    first = None
    body = {"message": text, "conversation_id": conversation}
    with httpx.stream("POST", f"{url}/chat/stream", json=body, timeout=600) as response:
        response.raise_for_status()
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
                if event == "token" and first is None:
                    first = time.monotonic() - started
            elif event == "error" and line.startswith("data:"):
                raise RuntimeError(f"the stream failed: {line}")
    total = time.monotonic() - started
    return (first if first is not None else total), total


def served(replica: ManagedProcess) -> int:
    """Completions the replica took on, as its log says (a line each, as a slot starts one)."""
    text = replica.log_path.read_text(errors="replace")
    return len(re.findall(r"launch_slot_: .*processing task", text))


def routed(url: str) -> dict[str, int]:
    """The gateway's count of requests by how their replica was chosen."""
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.findall(r'^tertulia_gateway_routed_total\{outcome="(\w+)"\} (\S+)$', metrics, re.M)
    return {outcome: int(float(value)) for outcome, value in found}


def prompt_tokens(address: str, port: int) -> float:
    """Prompt tokens the replica has computed (llama.cpp's counter)."""
    metrics = httpx.get(f"http://{address}:{port}/metrics", timeout=10).text
    found = re.search(r"^llamacpp:prompt_tokens_total (\S+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@dataclass(frozen=True)
class Run:
    """One routing's run: its turns, the requests each replica answered, the prompt tokens
    the replicas computed, and the gateway's count of requests by how their replica was
    chosen."""

    turns: list[Turn]
    counts: list[int]
    computed: float
    routed: dict[str, int]

    def ttft_p50(self) -> float:
        return statistics.median(turn.first_token for turn in self.counted())

    def counted(self) -> list[Turn]:
        return [turn for turn in self.turns if turn.index >= FROM_TURN]

    def busiest(self) -> float:
        """The busiest replica's requests over a fair share."""
        return max(self.counts) / (sum(self.counts) / len(self.counts))

    def kept_home(self) -> float:
        """The share of the conversations' turns sent to their own replica."""
        home, moved = self.routed.get("affinity", 0), self.routed.get("neighbour", 0)
        return home / (home + moved) if home + moved else 0.0


def run(workdir: Path, routing: str) -> Run:
    """The conversations under `routing` on fresh replicas."""
    port = free_port()
    replicas = [
        start_llama_cpp(
            workdir / address,
            gemma_model_path(),
            LLAMA_MODEL_ALIAS,
            host=address,
            port=port,
            context=CONTEXT,
            threads=THREADS,
        )[0]
        for address in ADDRESSES
    ]
    redis, redis_url = start_redis(workdir / "redis")
    gateway, url = start_gateway(
        workdir,
        {
            "BACKEND__URL": f"http://{ADDRESSES[0]}:{port}/v1",
            "BACKEND__REPLICAS": ",".join(ADDRESSES),
            "BACKEND__ROUTING": routing,
            # What the operator sets for llama-server with its default slots (4).
            "BACKEND__REPLICA_CAPACITY": "4",
            "BACKEND__READ_TIMEOUT": "600",
            "REDIS_URL": redis_url,
            "MAX_TOKENS": str(ANSWER_TOKENS),
            "TEMPERATURE": "0",
            "RATE_LIMIT__ENABLED": "false",
            # Every turn stays in the prompt: the history is the prefix the caches hold.
            "MEMORY__MAX_TOKENS": "16000",
            "MEMORY__MAX_TURNS": "100",
        },
        name=f"gateway-{routing}",
    )
    turns: list[Turn] = []
    failures: list[BaseException] = []
    rng = random.Random(f"{routing}-texts")  # texts of its own: no cache of the other run
    texts = {(c, t): message(rng, c, t) for c in range(CONVERSATIONS) for t in range(1, TURNS + 1)}

    def converse(conversation: int) -> None:
        pauses = random.Random(f"pauses-{conversation}")
        try:
            time.sleep(conversation * THINK_SECONDS / CONVERSATIONS)
            for index in range(1, TURNS + 1):
                if index > 1:
                    time.sleep(pauses.uniform(0.5, 1.5) * THINK_SECONDS)
                sent = time.monotonic()
                first, total = stream_turn(
                    url, f"{routing}-{conversation}", texts[conversation, index]
                )
                turns.append(Turn(conversation, index, sent, first, total))
        except BaseException as error:  # reported after the run
            failures.append(error)

    try:
        threads = [threading.Thread(target=converse, args=(c,)) for c in range(CONVERSATIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        counts = [served(replica) for replica in replicas]
        computed = sum(prompt_tokens(address, port) for address in ADDRESSES)
        chosen = routed(url)
        print(f"{routing}: requests by how their replica was chosen: {chosen}", flush=True)
    finally:
        gateway.stop()
        redis.stop()
        for replica in replicas:
            replica.stop()
    return Run(turns, counts, computed, chosen)


def rate(turns: list[Turn]) -> float:
    """Requests per second over the run, from the first request sent to the last answer."""
    span = max(turn.sent + turn.total for turn in turns) - min(turn.sent for turn in turns)
    return len(turns) / span


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def spread(values: list[float], unit: str, digits: int = 2) -> str:
    """The median of the runs' values, with their least and most."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}{unit}"
    return (
        f"{statistics.median(values):.{digits}f}{unit} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def main() -> None:
    runs: dict[str, list[Run]] = {"round-robin": [], "affinity": []}
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        for number in range(1, RUNS + 1):
            for routing in runs:
                started = time.monotonic()
                runs[routing].append(run(Path(tmp) / f"{routing}-{number}", routing))
                print(f"run {number}, {routing}: {time.monotonic() - started:.0f} s", flush=True)
    for number in range(RUNS):
        for routing, results in runs.items():
            result = results[number]
            ttft = [turn.first_token for turn in result.counted()]
            total = [turn.total for turn in result.counted()]
            home = f"; kept home {result.kept_home():.1%}" if routing == "affinity" else ""
            print(
                f"run {number + 1} {routing:>11}: TTFT p50 {result.ttft_p50():.2f} s, "
                f"p95 {percentile(ttft, 0.95):.2f} s; total p50 {statistics.median(total):.2f} s, "
                f"p95 {percentile(total, 0.95):.2f} s; requests per replica {result.counts}; "
                f"prompt tokens computed {result.computed:.0f}; TTFT mean "
                f"{statistics.fmean(ttft):.2f} s; {rate(result.turns):.2f} requests/s{home}"
            )
    ratios = [
        spreading.ttft_p50() / keeping.ttft_p50()
        for spreading, keeping in zip(runs["round-robin"], runs["affinity"], strict=True)
    ]
    busiest = [result.busiest() for result in runs["affinity"]]
    kept = [result.kept_home() for result in runs["affinity"]]
    print(
        f"over {RUNS} run(s), median (least-most): round-robin's TTFT p50 is "
        f"{spread(ratios, 'x', 1)} affinity's; the busiest replica {spread(busiest, 'x')} "
        f"its share; {spread([100 * share for share in kept], '%', 1)} of turns kept home"
    )
    for routing, results in runs.items():
        median = statistics.median
        p50s = [result.ttft_p50() for result in results]
        figure("routing", f"{routing} TTFT p50 (turn {FROM_TURN}+)", median(p50s), "s")
        figure(
            "routing",
            f"{routing} TTFT p95",
            median([percentile([t.first_token for t in r.counted()], 0.95) for r in results]),
            "s",
        )
        figure(
            "routing",
            f"{routing} total p50",
            median([median([t.total for t in r.counted()]) for r in results]),
            "s",
        )
        figure(
            "routing",
            f"{routing} total p95",
            median([percentile([t.total for t in r.counted()], 0.95) for r in results]),
            "s",
        )
        figure(
            "routing",
            f"{routing} prompt tokens computed",
            median([result.computed for result in results]),
            "tokens",
        )
    every = f" in all {RUNS}" if RUNS > 1 else ""
    figure(
        "routing",
        "affinity busiest replica / fair share",
        statistics.median(busiest),
        "x",
        f"<= {SHARE_TARGET}x{every}",
        max(busiest) <= SHARE_TARGET,
    )
    figure(
        "routing",
        "affinity turns kept home",
        100 * statistics.median(kept),
        "%",
        f">= {HOME_TARGET:.0%}{every}",
        min(kept) >= HOME_TARGET,
    )
    figure(
        "routing",
        "TTFT p50, round-robin / affinity",
        statistics.median(ratios),
        "x",
        f">= {TTFT_TARGET}x{every}",
        min(ratios) >= TTFT_TARGET,
    )


if __name__ == "__main__":
    main()
