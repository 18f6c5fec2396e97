"""Ingestion: files in, chunks out to Weaviate, idempotent by hash.

A document whose bytes, chunking and embedding model are unchanged is skipped before it is
even parsed. A changed one is re-chunked: chunks whose text is unchanged keep their vectors
(only their index is updated), new chunks are embedded and written in batches, and chunks
that are gone are deleted. `prune` deletes the documents no longer among the inputs. A file
that cannot be read is reported and skipped; the batch goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tertulia.knowledge.chunking import Chunk, chunk_document
from tertulia.knowledge.documents import UnreadableDocument, kind_of, parse
from tertulia.knowledge.embeddings import Embedder
from tertulia.knowledge.settings import KnowledgeSettings
from tertulia.knowledge.store import NewChunk, Store, StoredDocument, chunk_id

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 50 * 1024 * 1024
# What one run reads at most, held in memory while it embeds: files, and bytes in all.
MAX_FILES = 20_000
MAX_TOTAL_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Input:
    """One document to ingest: its source name (a path relative to what was given) and bytes."""

    source: str
    data: bytes
    kind: str


@dataclass
class Report:
    documents: Counter[str] = field(default_factory=Counter)  # added, changed, unchanged, ...
    chunks: Counter[str] = field(default_factory=Counter)  # written, kept, deleted
    failures: dict[str, str] = field(default_factory=dict)  # source -> reason
    # Why pruning would be unsafe this run (a path given is missing): nothing is pruned.
    prune_blocked: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "documents": {
                key: self.documents[key]
                for key in ("added", "changed", "unchanged", "removed", "failed")
            },
            "chunks": {key: self.chunks[key] for key in ("written", "kept", "deleted")},
            "failures": dict(self.failures),
        }


class Progress(Protocol):
    """Told as work is done; the CLI draws it as a progress bar."""

    def documents(self, total: int) -> None: ...

    def document_done(self, source: str, outcome: str) -> None: ...

    def chunks_written(self, count: int) -> None: ...


class _Silent:
    def documents(self, total: int) -> None:
        pass

    def document_done(self, source: str, outcome: str) -> None:
        pass

    def chunks_written(self, count: int) -> None:
        pass


def collect(paths: Sequence[Path], report: Report) -> list[Input]:
    """Every readable document under `paths`. Sources are relative to the path given, so a
    folder mounted anywhere keeps its names; hidden files and folders are skipped (a mounted
    ConfigMap's `..data` links among them). Links are followed only while they stay inside
    the folder given (a ConfigMap's files are links into it): one that leads out, to a
    mounted Secret say, is refused, and a loop is walked once. At most MAX_FILES documents
    and MAX_TOTAL_BYTES in all are read; the rest are reported, not read."""
    inputs: dict[str, Input] = {}
    total = 0
    for root in paths:
        if not root.exists():
            report.failures[str(root)] = "no such file or folder"
            report.documents["failed"] += 1
            report.prune_blocked = f"{root} is missing"
            continue
        base = root.parent if root.is_file() else root
        for path in _walk(root, report, base):
            kind = kind_of(path)
            if kind is None:
                continue
            source = path.relative_to(base).as_posix()
            if len(inputs) >= MAX_FILES:
                _refuse(report, source, f"over {MAX_FILES} documents in one run")
                continue
            try:
                size = path.stat().st_size
                if size > MAX_FILE_BYTES:
                    raise UnreadableDocument(f"larger than {MAX_FILE_BYTES // 2**20} MiB")
                if total + size > MAX_TOTAL_BYTES:
                    raise UnreadableDocument(
                        f"over {MAX_TOTAL_BYTES // 2**20} MiB of documents in one run"
                    )
                data = path.read_bytes()
            except (OSError, UnreadableDocument) as error:
                _refuse(report, source, str(error))
                continue
            if source in inputs:
                _refuse(report, source, f"the same name is also under another path ({root})")
                continue
            total += len(data)
            inputs[source] = Input(source, data, kind)
    return list(inputs.values())


def _refuse(report: Report, source: str, reason: str) -> None:
    report.failures[source] = reason
    report.documents["failed"] += 1


def _walk(root: Path, report: Report, base: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    inside = root.resolve()
    seen: set[Path] = set()
    for directory, folders, files in os.walk(root, followlinks=True):
        here = Path(directory).resolve()
        if here in seen or not here.is_relative_to(inside):
            # A loop back to a folder already walked, or a link out of the root.
            if not here.is_relative_to(inside):
                _refuse(report, Path(directory).relative_to(base).as_posix(), _OUTSIDE)
            folders[:] = []
            continue
        seen.add(here)
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(directory) / name
            if not path.resolve().is_relative_to(inside):
                _refuse(report, path.relative_to(base).as_posix(), _OUTSIDE)
                continue
            yield path


_OUTSIDE = "a link out of the source folder, not followed"


class Ingestor:
    def __init__(self, settings: KnowledgeSettings, store: Store, embedder: Embedder) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder

    def _chunks(self, item: Input) -> list[Chunk]:
        document = parse(item.source, item.data, item.kind)
        return chunk_document(document, self.settings.chunk_tokens, self.settings.chunk_overlap)

    async def prepare(self) -> str:
        """Create the collection on first use with the model's dimensions; the model's id."""
        model = await self.embedder.model_id()
        probe = await self.embedder.embed_one("dimensions")
        await self.store.ensure_collection(model, len(probe))
        return model

    async def ingest(
        self,
        inputs: Sequence[Input],
        *,
        prune: bool = False,
        report: Report | None = None,
        progress: Progress | None = None,
    ) -> Report:
        report = report or Report()
        progress = progress or _Silent()
        model = await self.prepare()
        stored = await self.store.inventory()
        progress.documents(len(inputs))
        for item in inputs:
            outcome = await self._one(item, stored.get(item.source), model, report, progress)
            report.documents[outcome] += 1
            progress.document_done(item.source, outcome)
        if prune and not inputs:
            report.prune_blocked = report.prune_blocked or "no documents were found"
        if prune and report.prune_blocked:
            logger.warning("not pruning", extra={"reason": report.prune_blocked})
        elif prune:
            # Never prune what failed to read this time: a bad file is not a deleted one.
            seen = {item.source for item in inputs} | set(report.failures)
            for source, document in stored.items():
                if source not in seen:
                    await self.store.delete(list(document.chunks))
                    report.documents["removed"] += 1
                    report.chunks["deleted"] += len(document.chunks)
        logger.info("ingestion finished", extra=report.as_dict())
        return report

    async def _one(
        self,
        item: Input,
        stored: StoredDocument | None,
        model: str,
        report: Report,
        progress: Progress,
    ) -> str:
        fingerprint = hashlib.sha256(
            b"\0".join(
                [
                    item.data,
                    model.encode(),
                    f"{self.settings.chunk_tokens}/{self.settings.chunk_overlap}".encode(),
                ]
            )
        ).hexdigest()
        if stored is not None and stored.fingerprint == fingerprint:
            report.chunks["kept"] += len(stored.chunks)
            return "unchanged"
        try:
            # Parsing a large PDF takes seconds of CPU: off the event loop, which in the
            # gateway streams every other answer meanwhile.
            chunks = await asyncio.to_thread(self._chunks, item)
        except UnreadableDocument as error:
            report.failures[item.source] = str(error)
            return "failed"
        if not chunks:
            report.failures[item.source] = "no text found"
            return "failed"
        ids = _ids(chunks)
        previous = stored.chunks if stored is not None else {}
        pairs = list(zip(ids, chunks, strict=True))
        new = [(chunk_id_, chunk) for chunk_id_, chunk in pairs if chunk_id_ not in previous]
        kept = [(chunk_id_, chunk) for chunk_id_, chunk in pairs if chunk_id_ in previous]
        batch = self.embedder.batch_size
        for start in range(0, len(new), batch):
            part = new[start : start + batch]
            vectors = await self.embedder.embed([chunk.embedded_text for _, chunk in part])
            await self.store.insert(
                [
                    NewChunk(chunk_id_, _properties(chunk, fingerprint, len(chunks)), vector)
                    for (chunk_id_, chunk), vector in zip(part, vectors, strict=True)
                ]
            )
            report.chunks["written"] += len(part)
            progress.chunks_written(len(part))
        await self.store.update(
            (
                chunk_id_,
                {
                    "chunk_index": chunk.index,
                    "chunk_count": len(chunks),
                    "fingerprint": fingerprint,
                },
            )
            for chunk_id_, chunk in kept
        )
        report.chunks["kept"] += len(kept)
        current = set(ids)
        gone = [chunk for chunk in previous if chunk not in current]
        await self.store.delete(gone)
        report.chunks["deleted"] += len(gone)
        return "added" if stored is None else "changed"


def _ids(chunks: Sequence[Chunk]) -> list[uuid.UUID]:
    """Ids from source and content; a passage repeated in one document counts its copies."""
    seen: Counter[str] = Counter()
    ids = []
    for chunk in chunks:
        digest = chunk.content_hash
        ids.append(chunk_id(chunk.source, digest, seen[digest]))
        seen[digest] += 1
    return ids


def _properties(chunk: Chunk, fingerprint: str, count: int) -> dict[str, object]:
    return {
        "text": chunk.text,
        "title": chunk.title,
        "section": chunk.section,
        "source": chunk.source,
        "chunk_index": chunk.index,
        "chunk_count": count,
        "content_hash": chunk.content_hash,
        "fingerprint": fingerprint,
    }
