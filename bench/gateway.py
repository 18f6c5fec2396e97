"""The gateway's cost: latency it adds over calling the model server directly, and its
throughput, side by side with LiteLLM's proxy in front of the same backend.

Every target runs one worker process pinned to CPU 1; the fake backend and the load
generator (wrk) share CPU 0, so the targets compete for nothing but their own core.
Baselines from the same run: the backend called directly (latency) and LiteLLM (throughput).

Targets: p50 added latency at most 2 ms at concurrency 1; at concurrency 256 at least 2x
LiteLLM's throughput, and no errors over 256 concurrent streams. (Quick mode stops at 32.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench._report import figure, sized
from tests.testbed.paths import cache_dir
from tests.testbed.process import ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[1]
CACHE = cache_dir()
LITELLM_REQUIREMENTS = REPO / "bench" / "requirements-litellm.txt"
REPLY = " ".join(["token"] * 20)
# Both proxies check an API key, as they would in production; the backend ignores it.
API_KEY = "sk-bench-0123456789abcdef0123456789"
DURATION_SECONDS = int(os.environ.get("BENCH_SECONDS", sized("10", "2")))
# Quick mode stops at 32: LiteLLM completes nothing within two seconds at 256.
CONCURRENCIES = sized((1, 32, 256), (1, 8, 32))
TOP = CONCURRENCIES[-1]

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
wrk.body = [[%s]]
"""


@dataclass(frozen=True)
class Run:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


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


def wrk(url: str, body: dict[str, object], concurrency: int, workdir: Path) -> Run:
    script = workdir / "post.lua"
    script.write_text(_WRK_SCRIPT % (API_KEY, json.dumps(body)))
    result = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{DURATION_SECONDS}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            str(script),
            url,
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
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(group) for group in socket_errors.groups())
    assert rate is not None, out
    if float(rate.group(1)) == 0:
        raise RuntimeError(
            f"{url} completed no request in {DURATION_SECONDS} s at concurrency {concurrency}: "
            "raise BENCH_SECONDS"
        )
    return Run(float(rate.group(1)), latency("50"), latency("99"), errors)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as directory:
        workdir = Path(directory)
        processes: list[ManagedProcess] = []
        try:
            targets = start_targets(workdir, processes)
            report(targets, workdir)
        finally:
            for process in processes:
                process.stop()


def start_targets(workdir: Path, processes: list[ManagedProcess]) -> dict[str, str]:
    env = {"PYTHONPATH": str(REPO)}
    backend_port, gateway_port, litellm_port = free_port(), free_port(), free_port()
    backend = ManagedProcess(
        "fake-backend",
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "tests.fakes.openai_backend",
            "--port",
            str(backend_port),
            "--reply",
            REPLY,
        ],
        workdir,
        env,
    ).start()
    processes.append(backend)
    backend_url = f"http://127.0.0.1:{backend_port}/v1"
    wait_ready(backend, f"{backend_url}/models")

    keys = workdir / "api-keys"
    keys.mkdir()
    (keys / "bench").write_text(API_KEY)
    gateway = ManagedProcess(
        "gateway",
        ["taskset", "-c", "1", str(Path(sys.executable).with_name("tertulia")), "gateway", "serve"],
        workdir,
        {
            "TERTULIA_GATEWAY_PORT": str(gateway_port),
            "TERTULIA_GATEWAY_BACKEND__URL": backend_url,
            "TERTULIA_GATEWAY_BACKEND__MODEL": "fake-model",
            "TERTULIA_GATEWAY_RATE_LIMIT__ENABLED": "false",
            "TERTULIA_GATEWAY_API_KEYS_DIR": str(keys),
            "TERTULIA_GATEWAY_LOG_LEVEL": "warning",
        },
    ).start()
    processes.append(gateway)
    wait_ready(gateway, f"http://127.0.0.1:{gateway_port}/healthz")

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
        [
            "taskset",
            "-c",
            "1",
            str(venv / "bin" / "litellm"),
            "--config",
            str(config),
            "--port",
            str(litellm_port),
            "--num_workers",
            "1",
        ],
        workdir,
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MASTER_KEY": API_KEY,
        },
    ).start()
    processes.append(litellm)
    wait_ready(litellm, f"http://127.0.0.1:{litellm_port}/health/liveliness")
    return {
        "backend (direct)": f"{backend_url}/chat/completions",
        "tertulia gateway": f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
        "litellm proxy": f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
    }


def report(targets: dict[str, str], workdir: Path) -> None:
    body: dict[str, object] = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
    }
    results: dict[tuple[str, int], Run] = {}
    print(f"{'target':<18} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for concurrency in CONCURRENCIES:
        for name, url in targets.items():
            run = wrk(url, body, concurrency, workdir)
            results[name, concurrency] = run
            print(
                f"{name:<18} {concurrency:>5} {run.requests_per_second:>9.0f} "
                f"{run.p50_ms:>8.2f} {run.p99_ms:>8.2f} {run.errors:>7}",
                flush=True,
            )
    stream = wrk(targets["tertulia gateway"], {**body, "stream": True}, TOP, workdir)
    print(
        f"{'gateway streams':<18} {TOP:>5} {stream.requests_per_second:>9.0f} "
        f"{stream.p50_ms:>8.2f} {stream.p99_ms:>8.2f} {stream.errors:>7}"
    )

    direct, gateway = results["backend (direct)", 1], results["tertulia gateway", 1]
    added_p50 = gateway.p50_ms - direct.p50_ms
    added_p99 = gateway.p99_ms - direct.p99_ms
    ratio = (
        results["tertulia gateway", TOP].requests_per_second
        / results["litellm proxy", TOP].requests_per_second
    )
    print()
    print(f"added latency at concurrency 1: p50 {added_p50:.2f} ms (target <= 2), ", end="")
    print(f"p99 {added_p99:.2f} ms")
    for concurrency in CONCURRENCIES:
        mine = results["tertulia gateway", concurrency].requests_per_second
        theirs = results["litellm proxy", concurrency].requests_per_second
        print(f"throughput vs LiteLLM at concurrency {concurrency}: {mine / theirs:.1f}x")
    print(f"throughput vs LiteLLM at {TOP}: {ratio:.1f}x (target >= 2 at 256)")
    print(f"errors over {TOP} concurrent streams: {stream.errors} (target 0)")
    at_target = TOP == 256
    figure("gateway", "added p50 latency at concurrency 1", added_p50, "ms", "<= 2", added_p50 <= 2)
    figure(
        "gateway",
        f"throughput against LiteLLM at {TOP}",
        ratio,
        "x",
        ">= 2" if at_target else "",
        ratio >= 2 if at_target else None,
    )
    figure("gateway", f"errors over {TOP} streams", stream.errors, "", "0", stream.errors == 0)


if __name__ == "__main__":
    main()
