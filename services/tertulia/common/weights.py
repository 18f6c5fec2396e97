"""Where a model's weights come from, and fetching them once into a cache folder.

A source is a URL, as KubeAI spells them:

- `hf://OWNER/REPO/PATH/FILE.gguf`: one file of a Hugging Face repository (llama.cpp), or
  `hf://OWNER/REPO` for a whole repository (vLLM downloads those itself). `HF_ENDPOINT` points
  at a mirror or an air-gapped hub, `HF_TOKEN` opens gated repositories.
- `https://HOST/PATH/FILE.gguf` (or `http://`): one file from any web server.
- `pvc://CLAIM/PATH`: a file or folder already on a PersistentVolumeClaim; nothing is fetched.
- `ollama://NAME:TAG`: a model of the Ollama library, which Ollama pulls itself.

The operator uses `parse` and `cache_path` to render the model server; the init container it
adds runs `tertulia model fetch`, which downloads into the cache volume: resumable after a
restart, one replica at a time when several share the volume, and complete or absent (the
file appears under its name only once every byte has arrived).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer

if TYPE_CHECKING:
    import httpx

Scheme = Literal["hf", "https", "http", "pvc", "ollama"]
HUGGING_FACE = "https://huggingface.co"
_CHUNK = 1 << 20


class InvalidSource(ValueError):
    """A source that is not one of the supported forms; the message says which are."""


@dataclass(frozen=True)
class ModelSource:
    scheme: Scheme
    # hf: OWNER/REPO; pvc: the claim; https/http: the host; ollama: the model name.
    location: str
    # The file (or folder) within it; empty for a whole repository or an Ollama model.
    path: str
    url: str

    @property
    def downloads(self) -> bool:
        """Whether the operator's init container fetches it (rather than the engine, or a
        claim that already holds it)."""
        return self.scheme in ("https", "http") or (self.scheme == "hf" and bool(self.path))

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path).name if self.path else self.location.rsplit("/", 1)[-1]


def parse(url: str) -> ModelSource:
    scheme, separator, rest = url.partition("://")
    if not separator or not rest.strip("/"):
        raise InvalidSource(f"{url!r}: expected hf://, https://, http://, pvc:// or ollama://")
    rest = rest.strip("/")
    if ".." in rest.split("/"):
        raise InvalidSource(f"{url!r}: '..' is not allowed in a model source")
    if scheme == "hf":
        parts = rest.split("/")
        if len(parts) < 2:
            raise InvalidSource(f"{url!r}: expected hf://OWNER/REPO or hf://OWNER/REPO/FILE")
        return ModelSource("hf", "/".join(parts[:2]), "/".join(parts[2:]), url)
    if scheme in ("https", "http"):
        host, _, path = rest.partition("/")
        if not path:
            raise InvalidSource(f"{url!r}: expected {scheme}://HOST/PATH/FILE")
        return ModelSource(cast(Scheme, scheme), host, path, url)
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        return ModelSource("pvc", claim, path, url)
    if scheme == "ollama":
        return ModelSource("ollama", rest, "", url)
    raise InvalidSource(f"{url!r}: expected hf://, https://, http://, pvc:// or ollama://")


def cache_path(source: ModelSource) -> PurePosixPath:
    """Where a downloaded file lives in the cache folder: its own folder per source, so two
    repositories' files of the same name never collide, named so a person can tell which."""
    if source.scheme == "hf":
        folder = "hf--" + source.location.replace("/", "--")
        return PurePosixPath(folder) / source.path
    digest = hashlib.sha256(source.url.encode()).hexdigest()[:12]
    return PurePosixPath(f"url--{source.location}--{digest}") / source.filename


def download_url(source: ModelSource, endpoint: str | None = None) -> str:
    """The URL a file source is fetched from; for hf://, the hub's `resolve` route of its
    main revision, at `endpoint` (HF_ENDPOINT) when given."""
    if source.scheme == "hf":
        base = (endpoint or HUGGING_FACE).rstrip("/")
        return f"{base}/{source.location}/resolve/main/{source.path}"
    return source.url


class FetchFailed(RuntimeError):
    """The server refused or broke off; the message names the URL and status, never a token."""


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # Replicas that share the cache volume fetch one at a time; the others then find the file.
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch(
    source: ModelSource,
    cache: Path,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """The file of `source` in `cache`, downloaded first if it is not there yet. A partial
    download left by an earlier attempt continues where it stopped."""
    import httpx

    if not source.downloads:
        raise FetchFailed(f"{source.url} is not a single file to download")
    target = cache / cache_path(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.with_name(target.name + ".lock")):
        if target.is_file():
            return target
        partial = target.with_name(target.name + ".partial")
        url = download_url(source, endpoint)
        headers = {"User-Agent": "tertulia-model-fetch"}
        if token and source.scheme == "hf":
            # httpx drops it when the hub redirects to another host (its file CDN).
            headers["Authorization"] = f"Bearer {token}"
        try:
            return _download(url, headers, partial, target, timeout)
        except httpx.HTTPError as error:
            # Connection refused, a name that does not resolve, a stream cut: the next try
            # resumes from what arrived.
            raise FetchFailed(f"GET {url}: {error}") from None


def _download(
    url: str, headers: dict[str, str], partial: Path, target: Path, timeout: float
) -> Path:
    """GET `url` into `partial`, resuming what it holds, then rename it to `target`."""
    import httpx

    with httpx.Client(follow_redirects=True, timeout=timeout) as client:
        for _attempt in range(2):
            offset = partial.stat().st_size if partial.exists() else 0
            request_headers = dict(headers)
            if offset:
                request_headers["Range"] = f"bytes={offset}-"
            with client.stream("GET", url, headers=request_headers) as response:
                if response.status_code == 416 and offset:
                    # The partial file is already whole, or longer than the file now is.
                    partial.unlink()
                    continue
                if response.status_code not in (200, 206):
                    raise FetchFailed(f"GET {url}: HTTP {response.status_code}")
                resumed = response.status_code == 206
                expected = _expected_size(response, offset if resumed else 0)
                with partial.open("ab" if resumed else "wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        out.write(chunk)
                size = partial.stat().st_size
                if expected is not None and size != expected:
                    raise FetchFailed(
                        f"GET {url}: got {size} of {expected} bytes; the next try resumes"
                    )
                partial.replace(target)
                return target
    raise FetchFailed(f"GET {url}: the server kept refusing the range requested")


def _expected_size(response: httpx.Response, offset: int) -> int | None:
    """The whole file's size: from Content-Range on a resumed download, else the offset plus
    Content-Length; None when the server says neither."""
    content_range = response.headers.get("content-range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("content-length")
    return offset + int(length) if length is not None else None


app = typer.Typer(help="Model weights.", no_args_is_help=True)


@app.command("fetch")
def fetch_command(
    source: Annotated[
        str, typer.Argument(help="hf://OWNER/REPO/FILE, or an https:// or http:// URL.")
    ],
    cache: Annotated[Path, typer.Option(help="The cache folder (the model's volume).")] = Path(
        "/models"
    ),
) -> None:
    """Download a model file into the cache once; later runs find it and return at once.
    Reads HF_TOKEN and HF_ENDPOINT as the Hugging Face tools do."""
    try:
        parsed = parse(source)
        path = fetch(
            parsed,
            cache,
            token=os.environ.get("HF_TOKEN") or None,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    except (InvalidSource, FetchFailed) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    except OSError as error:
        typer.echo(f"error: {source}: {error.strerror or error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{path} ({path.stat().st_size} bytes)")
