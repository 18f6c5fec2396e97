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
file appears under its name only once every byte has arrived). With a SHA-256 the file is
checked after the download and on every start (a cached file that no longer matches is
fetched again); no download grows past a size cap (the volume's), and an https:// source is
never followed to plain http.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer

from tertulia.common.logging import protect

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


_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}  # fmt: skip
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")


def size_in_bytes(quantity: str) -> int:
    """A Kubernetes quantity of bytes (`50Gi`, `500M`, `1073741824`) as bytes."""
    found = _QUANTITY.match(quantity.strip())
    if found is None:
        raise ValueError(f"{quantity!r} is not a size such as 50Gi or 500M")
    return int(float(found.group(1)) * _UNITS[found.group(2) or ""])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # Replicas that share the cache volume fetch one at a time; the others then find the file.
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class Limits:
    """What a downloaded file must be: its SHA-256 (hex) when known, and at most how big."""

    sha256: str | None = None
    max_bytes: int | None = None


def fetch(
    source: ModelSource,
    cache: Path,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float = 60.0,
    limits: Limits | None = None,
) -> Path:
    """The file of `source` in `cache`, downloaded first if it is not there yet. A partial
    download left by an earlier attempt continues where it stopped. With `limits.sha256` a
    cached file is checked first and fetched again when it does not match; a download is
    checked before it takes the file's name."""
    import httpx

    limits = limits or Limits()
    if not source.downloads:
        raise FetchFailed(f"{source.url} is not a single file to download")
    target = cache / cache_path(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.with_name(target.name + ".lock")):
        if target.is_file():
            if limits.sha256 is None or sha256_of(target) == limits.sha256:
                return target
            # Changed on the volume since it was fetched: not what the spec names.
            target.unlink()
        partial = target.with_name(target.name + ".partial")
        url = download_url(source, endpoint)
        headers = {"User-Agent": "tertulia-model-fetch"}
        if token and source.scheme == "hf":
            # httpx drops it when the hub redirects to another host (its file CDN).
            headers["Authorization"] = f"Bearer {token}"
        try:
            return _download(url, headers, partial, target, timeout, limits)
        except httpx.HTTPError as error:
            # Connection refused, a name that does not resolve, a stream cut: the next try
            # resumes from what arrived.
            raise FetchFailed(f"GET {url}: {error}") from None


def _download(
    url: str,
    headers: dict[str, str],
    partial: Path,
    target: Path,
    timeout: float,
    limits: Limits,
) -> Path:
    """GET `url` into `partial`, resuming what it holds, then rename it to `target`."""
    import httpx

    def no_downgrade(request: httpx.Request) -> None:
        # A redirect from https to plain http would hand the file (and whatever a proxy on
        # the way does with it) to the network unprotected: refused before it is sent.
        if url.startswith("https://") and request.url.scheme != "https":
            raise FetchFailed(f"GET {url}: refused a redirect to {request.url.scheme}://")

    hooks = {"request": [no_downgrade]}
    with httpx.Client(follow_redirects=True, timeout=timeout, event_hooks=hooks) as client:
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
                cap = limits.max_bytes
                if cap is not None and expected is not None and expected > cap:
                    raise FetchFailed(f"GET {url}: {expected} bytes, over the cap of {cap}")
                with partial.open("ab" if resumed else "wb") as out:
                    written = offset if resumed else 0
                    for chunk in response.iter_bytes(_CHUNK):
                        written += len(chunk)
                        if cap is not None and written > cap:
                            out.close()
                            partial.unlink()
                            raise FetchFailed(f"GET {url}: more than the cap of {cap} bytes")
                        out.write(chunk)
                size = partial.stat().st_size
                if expected is not None and size != expected:
                    raise FetchFailed(
                        f"GET {url}: got {size} of {expected} bytes; the next try resumes"
                    )
                if limits.sha256 is not None and (found := sha256_of(partial)) != limits.sha256:
                    partial.unlink()
                    raise FetchFailed(
                        f"GET {url}: its SHA-256 is {found}, not {limits.sha256}; nothing kept"
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
    sha256: Annotated[
        str | None,
        typer.Option(help="The file's SHA-256: checked after the download and on every run."),
    ] = None,
    max_size: Annotated[
        str | None,
        typer.Option(help="The most a download may be, as a quantity (50Gi): the volume's size."),
    ] = None,
) -> None:
    """Download a model file into the cache once; later runs find it and return at once.
    Reads HF_TOKEN and HF_ENDPOINT as the Hugging Face tools do."""
    try:
        parsed = parse(source)
        if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise InvalidSource(f"--sha256 {sha256!r} is not 64 lowercase hex digits")
        limits = Limits(sha256, size_in_bytes(max_size) if max_size else None)
        path = fetch(
            parsed,
            cache,
            token=protect(os.environ.get("HF_TOKEN") or None),
            endpoint=os.environ.get("HF_ENDPOINT") or None,
            limits=limits,
        )
    except (InvalidSource, FetchFailed, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    except OSError as error:
        typer.echo(f"error: {source}: {error.strerror or error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{path} ({path.stat().st_size} bytes)")
