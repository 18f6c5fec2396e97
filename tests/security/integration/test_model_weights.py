"""Attacks on the model's weights, against `tertulia model fetch` (the operator's init
container) and a stand-in hub: a file that is not the one the spec pins, a file changed on the
volume after it was fetched, a file larger than its volume, and a redirect from https to plain
http."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tertulia.common.weights import cache_path, parse
from tests.fakes.model_hub import FakeModelHub
from tests.testbed.pki import issue, write_pki

FILE = "owner/model-GGUF/model.gguf"
TERTULIA = str(Path(sys.executable).with_name("tertulia"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hub") / "model.gguf"
    path.write_bytes(os.urandom(1024 * 1024 + 3))
    return path


@pytest.fixture
def hub(weights: Path) -> Iterator[FakeModelHub]:
    with FakeModelHub({FILE: weights}) as fake:
        yield fake


def fetch(hub_url: str, cache: Path, *options: str, env: dict[str, str] | None = None) -> str:
    """`tertulia model fetch` as the init container runs it; its output, or its error."""
    result = subprocess.run(
        [TERTULIA, "model", "fetch", f"hf://{FILE}", "--cache", str(cache), *options],
        env={**os.environ, "HF_ENDPOINT": hub_url, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout if result.returncode == 0 else "error:" + result.stderr


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_that_is_not_the_one_pinned_is_refused_and_nothing_is_kept(
    hub: FakeModelHub, weights: Path, tmp_path: Path
) -> None:
    wrong = "0" * 64
    said = fetch(hub.base_url, tmp_path, "--sha256", wrong)
    assert said.startswith("error:") and f"not {wrong}" in said
    target = tmp_path / cache_path(parse(f"hf://{FILE}"))
    assert not target.exists()
    assert not target.with_name(target.name + ".partial").exists()
    # The right digest: taken.
    assert not fetch(hub.base_url, tmp_path, "--sha256", sha256(weights)).startswith("error:")
    assert sha256(target) == sha256(weights)


def test_a_file_changed_on_the_volume_is_fetched_again_at_the_next_start(
    hub: FakeModelHub, weights: Path, tmp_path: Path
) -> None:
    digest = sha256(weights)
    assert not fetch(hub.base_url, tmp_path, "--sha256", digest).startswith("error:")
    target = tmp_path / cache_path(parse(f"hf://{FILE}"))
    with target.open("r+b") as file:  # one byte changed where the weights are kept
        file.seek(1000)
        file.write(b"\x00" if file.read(1) != b"\x00" else b"\x01")
    before = len(hub.fetched(FILE))
    assert not fetch(hub.base_url, tmp_path, "--sha256", digest).startswith("error:")
    assert len(hub.fetched(FILE)) == before + 1, "the changed file was not fetched again"
    assert sha256(target) == digest
    # Unchanged, the next start finds it and fetches nothing.
    assert not fetch(hub.base_url, tmp_path, "--sha256", digest).startswith("error:")
    assert len(hub.fetched(FILE)) == before + 1


def test_a_file_larger_than_its_volume_is_refused(
    hub: FakeModelHub, weights: Path, tmp_path: Path
) -> None:
    said = fetch(hub.base_url, tmp_path, "--max-size", "512Ki")
    assert said.startswith("error:") and "over the cap of 524288" in said
    assert not any(path.is_file() and path.stat().st_size for path in tmp_path.rglob("*.gguf*"))
    assert not fetch(hub.base_url, tmp_path, "--max-size", "2Mi").startswith("error:")


class RedirectingServer:
    """An HTTPS server whose every path redirects to the same path on a plain-http URL."""

    def __init__(self, to: str, certificate: tuple[Path, Path]) -> None:
        self.to = to
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(*map(str, certificate))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _start(self) -> None:
        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"{self.to}{request.path}")

        app = web.Application()
        app.router.add_get("/{path:.*}", redirect)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def __enter__(self) -> RedirectingServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self.runner is not None
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_a_redirect_from_https_to_plain_http_is_refused(hub: FakeModelHub, tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    certificate = issue(pki, tmp_path / "pki", "hub", "hub", server_names=("127.0.0.1",))
    with RedirectingServer(hub.base_url, certificate) as server:
        said = fetch(
            f"https://127.0.0.1:{server.port}",
            tmp_path / "cache",
            env={"SSL_CERT_FILE": str(pki.ca_cert)},
        )
    assert said.startswith("error:") and "refused a redirect to http://" in said
    # It never reached the plain-http server.
    assert not hub.fetched(FILE)
