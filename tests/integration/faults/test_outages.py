"""Faults under chat load: Redis, the model server and Weaviate, each killed (SIGKILL) while
clients chat, and started again. A client sees only 200s, and 503s that say when to retry;
no other 5xx. Without Redis the answers go on without memory, saying so, and /readyz says
why; no turn answered 200 without that notice goes missing from its conversation."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.integration.knowledge.conftest import KnowledgeBase
from tests.testbed.process import ManagedProcess, eventually
from tests.testbed.servers import start_gateway, start_llama_server, start_redis, start_weaviate

CLIENTS = 3


@dataclass
class Exchange:
    at: float
    client: int
    message: str
    status: int
    retry_after: str | None
    notice: str | None = None


def kill(process: ManagedProcess) -> None:
    process.popen.send_signal(signal.SIGKILL)
    process.popen.wait()


def test_outages_under_load_give_503s_with_retry_after_and_lose_no_answered_turn(
    tmp_path: Path, embeddings_url: str, record_property: Callable[[str, object], None]
) -> None:
    redis, redis_url = start_redis(tmp_path / "redis")
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    model, model_url = start_llama_server(tmp_path / "model")
    model_port = int(model_url.rsplit(":", 1)[1].split("/")[0])
    weaviate, address = start_weaviate(tmp_path / "weaviate")
    key_file = tmp_path / "weaviate-key"
    key_file.write_text(address.api_key)
    knowledge = KnowledgeBase(address, key_file, embeddings_url, "Faults")
    gateway, url = start_gateway(
        tmp_path,
        {
            "BACKEND__URL": model_url,
            "BACKEND__RETRIES": "0",
            "REDIS_URL": redis_url,
            "MAX_TOKENS": "6",
            "TEMPERATURE": "0",
            "RATE_LIMIT__ENABLED": "false",
            # Every turn of the run stays in memory, so each can be looked for.
            "MEMORY__MAX_TURNS": "1000",
            **knowledge.gateway_settings(),
        },
        name="faults-gateway",
    )
    exchanges: list[Exchange] = []
    stop = threading.Event()

    def chat(client: int) -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            message = f"client {client} turn {turn}"
            body = {"message": message, "conversation_id": f"c{client}", "user": f"u{client}"}
            try:
                answer = httpx.post(f"{url}/chat", json=body, timeout=60)
            except httpx.HTTPError:
                continue  # the gateway itself is never killed; a client timeout is not a status
            exchanges.append(
                Exchange(
                    time.monotonic(),
                    client,
                    message,
                    answer.status_code,
                    answer.headers.get("retry-after"),
                    answer.json().get("notice") if answer.status_code == 200 else None,
                )
            )
            if answer.status_code != 200:
                time.sleep(0.2)

    def answered_after(moment: float) -> bool:
        return any(e.status == 200 and e.at > moment for e in exchanges)

    clients = [threading.Thread(target=chat, args=(index,)) for index in range(CLIENTS)]
    for thread in clients:
        thread.start()
    running = {"redis": redis, "model": model, "weaviate": weaviate}
    # Each is killed (Weaviate stopped), and started again where it was: Redis empty on the
    # same port, the model server on its port, Weaviate on its address with its data.
    restart = {
        "redis": lambda: start_redis(tmp_path / "redis", port=redis_port)[0],
        "model": lambda: start_llama_server(tmp_path / "model", port=model_port)[0],
        "weaviate": lambda: start_weaviate(tmp_path / "weaviate", address=address)[0],
    }
    back: dict[str, float] = {}
    killed: dict[str, float] = {}
    readiness_without_redis: dict[str, Any] = {}
    try:
        eventually(lambda: answered_after(0), 120, "answers before any fault")
        for name in ("redis", "model", "weaviate"):
            killed[name] = time.monotonic()
            if name == "weaviate":
                running[name].stop()  # answers go on without context meanwhile
            else:
                kill(running[name])
            if name == "redis":
                # Answers go on without memory, saying so; the gateway stays Ready, degraded.
                eventually(
                    lambda: any(e.notice for e in exchanges if e.at > killed["redis"]),
                    60,
                    "an answer without memory",
                )
                readiness_without_redis.update(httpx.get(f"{url}/readyz", timeout=10).json())
            time.sleep(2)
            running[name] = restart[name]()
            back[name] = time.monotonic()
            eventually(
                lambda name=name: answered_after(back[name]),  # type: ignore[misc]
                120,
                f"answers with {name} back",
            )
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=90)
    try:
        statuses = Counter(e.status for e in exchanges)
        record_property("statuses", dict(statuses))
        print(f"faults under load: {dict(statuses)} over {len(exchanges)} requests")
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[503] > 0, "no outage was ever seen: the faults landed nowhere"
        assert all(e.retry_after for e in exchanges if e.status == 503)
        assert readiness_without_redis["status"] == "degraded", readiness_without_redis
        store = readiness_without_redis["checks"]["store"]
        assert store["status"] == "down"
        assert store["without"]["memory"] == "answering without history"
        # Without Redis, answers carried the notice; with it, none did.
        assert all(
            e.notice is None for e in exchanges if e.status == 200 and e.at < killed["redis"]
        )
        # Every turn answered since Redis came back is in its conversation (Redis keeps
        # memory in RAM: what it held before its restart is gone, as documented).
        for client in range(CLIENTS):
            history = httpx.get(
                f"{url}/conversations/c{client}", params={"user": f"u{client}"}, timeout=10
            ).json()["turns"]
            remembered = {turn["content"] for turn in history if turn["role"] == "user"}
            answered = {
                e.message
                for e in exchanges
                if e.client == client
                and e.status == 200
                and e.notice is None
                and e.at > back["redis"]
            }
            assert answered <= remembered, json.dumps(sorted(answered - remembered))
    finally:
        gateway.stop()
        for process in running.values():
            process.stop()
