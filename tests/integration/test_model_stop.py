"""A stopping llama.cpp pod finishes its answers: the preStop the operator renders, run against
a real llama-server with an answer in flight, returns once that answer is done and not before
(llama.cpp ends its streams at once on SIGTERM, which the kubelet sends when it returns)."""

from __future__ import annotations

import subprocess
import threading
import time
from urllib.parse import urlsplit

import httpx

from tests.testbed.process import eventually
from tests.testbed.servers import LLAMA_MODEL_ALIAS
from tests.unit.operator.test_render import example, with_spec
from tests.unit.operator.test_render_engines import model_container


def busy(base: str) -> bool:
    """Whether llama-server says it is processing a request (its /metrics gauge)."""
    metrics = httpx.get(f"{base}/metrics", timeout=5).text
    return any(
        line.startswith("llamacpp:requests_processing ") and float(line.split()[1]) > 0
        for line in metrics.splitlines()
    )


def test_a_stopping_llama_server_is_stopped_only_once_its_answer_is_done(llama_url: str) -> None:
    base = llama_url.removesuffix("/v1")
    port = urlsplit(llama_url).port
    bot = with_spec(example("all-platforms"), {"gateway": {"maxTokens": 400}})
    script = model_container(bot)["lifecycle"]["preStop"]["exec"]["command"][2]
    # As rendered, for this server's port, and without the wait for the cluster DNS.
    assert "STOP_DELAY=15\n" in script and "PORT=8080\n" in script
    script = script.replace("STOP_DELAY=15\n", "STOP_DELAY=0\n")
    script = script.replace("PORT=8080\n", f"PORT={port}\n")

    answered: dict[str, float] = {}

    def long_answer() -> None:
        body = {
            "model": LLAMA_MODEL_ALIAS,
            "messages": [{"role": "user", "content": "Count from one to a thousand in words."}],
            "max_tokens": 400,
            "temperature": 0,
            # The whole allowance, whatever the model thinks of stopping.
            "ignore_eos": True,
        }
        reply = httpx.post(f"{llama_url}/chat/completions", json=body, timeout=300)
        answered["at"] = time.monotonic()
        answered["tokens"] = reply.json()["usage"]["completion_tokens"]

    request = threading.Thread(target=long_answer)
    request.start()
    eventually(lambda: busy(base), 30, "the answer to be in flight", interval=0.05)
    began = time.monotonic()
    subprocess.run(["sh", "-c", script], check=True, timeout=300)
    stopped = time.monotonic()
    request.join(timeout=300)

    assert answered["tokens"] == 400
    # The preStop waited for the answer (the kill would otherwise have landed mid-way) and
    # let go about a second after it (it polls every second).
    assert answered["at"] - began > 1.0, "the answer ended before the preStop could wait for it"
    assert answered["at"] <= stopped + 0.2
    assert stopped - answered["at"] < 3.0
