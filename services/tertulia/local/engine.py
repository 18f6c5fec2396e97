"""llama.cpp's own server, llama-server, as local mode and the test bed run it: the same
engine and release the operator runs in a cluster (`server-bNNNN`), with the same flags.

It is found as TERTULIA_LLAMA_SERVER names it, as `llama-server` on the PATH (a llama.cpp
install), or in the cache where `make run` and the test bed build it once
(hack/build-llama-server.sh).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tertulia.knowledge.local_model import cache_dir


class EngineMissing(RuntimeError):
    """No llama-server to run; the message says how to get one."""


def llama_server() -> Path:
    from tertulia.operator.render.images import LLAMACPP_RELEASE

    named = os.environ.get("TERTULIA_LLAMA_SERVER")
    if named:
        if not Path(named).is_file():
            raise EngineMissing(f"TERTULIA_LLAMA_SERVER names {named}, which is not a file")
        return Path(named)
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    built = cache_dir() / "llama-server" / f"{LLAMACPP_RELEASE}-avx2" / "llama-server"
    if built.is_file():
        return built
    raise EngineMissing(
        "llama.cpp's llama-server is needed: install llama.cpp (its llama-server on the "
        "PATH), set TERTULIA_LLAMA_SERVER, or run `make run`, which builds it once"
    )


THREADS_VARIABLE = "TERTULIA_LLAMA_THREADS"


def threads_from_env() -> int | None:
    """The threads each llama-server takes when TERTULIA_LLAMA_THREADS says (llama.cpp's
    default, every core, otherwise). Set it where the servers share the cores with other work:
    llama.cpp's threads wait for each other by spinning, so two servers that each take every
    core slow each other down many times over (three servers answering at once on 2 cores:
    83 s with every core each, 9.3 s with one thread each; docs/local.md)."""
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise EngineMissing(f"{THREADS_VARIABLE} must be a whole number of threads, at least 1")
    return int(value)


def server_args(
    model: Path,
    alias: str,
    *,
    host: str,
    port: int,
    context: int,
    embeddings: bool = False,
    pooling: str | None = None,
    chat_template: str | None = None,
    threads: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """llama-server's command line for one model, as the operator's render has it (the
    OpenAI-compatible API, /health, --metrics); `embeddings` serves /v1/embeddings, each of
    whose inputs is embedded in one batch, so the batch is the whole context (the model's
    positions), pooled as `pooling` says."""
    args = [
        str(llama_server()),
        "--model", str(model),
        "--alias", alias,
        "--host", host,
        "--port", str(port),
        "--ctx-size", str(context),
        "--metrics",
    ]  # fmt: skip
    if embeddings:
        args += ["--embeddings", "--batch-size", str(context), "--ubatch-size", str(context)]
        if pooling:
            args += ["--pooling", pooling]
    if chat_template:
        args += ["--chat-template", chat_template]
    threads = threads or threads_from_env()
    if threads:
        args += ["--threads", str(threads)]
    return [*args, *extra]
