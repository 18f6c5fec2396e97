"""The Weaviate collection of one ChatBot: chunks with their vectors and metadata.

The vectors come from our embedding model (no Weaviate vectorizer module). Each chunk's id is
derived from its source, its content hash and its occurrence in the document, so re-ingesting
unchanged text finds the same ids and writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import weaviate
from weaviate import WeaviateAsyncClient
from weaviate.backup.backup import (
    BackupListReturn,
    BackupReturn,
    BackupStatus,
    BackupStorage,
)
from weaviate.classes.config import (
    Configure,
    ConsistencyLevel,
    DataType,
    Property,
    Tokenization,
    VectorDistances,
)
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter, HybridFusion, MetadataQuery
from weaviate.collections.classes.data import DataObject
from weaviate.exceptions import WeaviateBaseError

from tertulia.knowledge.embeddings import Embedder, EmbeddingError
from tertulia.knowledge.results import Hit, SearchFilters, StoreError
from tertulia.knowledge.settings import KnowledgeSettings, read_secret

logger = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("6f1d3b0e-5c1a-4d7e-9a39-7465727475c1")
_SEARCHED = ["text", "title", "section"]
_RETURNED = ["text", "source", "title", "section", "chunk_index"]


class _SearchFailed(StoreError):
    """Weaviate answered a search with an error, or its connection failed."""


def chunk_id(source: str, content_hash: str, occurrence: int) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{source}\0{content_hash}\0{occurrence}")


@dataclass
class StoredDocument:
    chunks: dict[uuid.UUID, int] = field(default_factory=dict)  # id -> chunk index
    marks: set[tuple[str, int]] = field(default_factory=set)  # (fingerprint, chunk count)

    @property
    def fingerprint(self) -> str:
        """The fingerprint its chunks agree on; empty when a run stopped half-way through
        writing it (mixed fingerprints, or fewer chunks than were meant), so it is redone."""
        if len(self.marks) != 1:
            return ""
        fingerprint, count = next(iter(self.marks))
        return fingerprint if count == len(self.chunks) else ""


@dataclass(frozen=True)
class NewChunk:
    id: uuid.UUID
    properties: dict[str, Any]
    vector: list[float]


class Store:
    def __init__(self, settings: KnowledgeSettings) -> None:
        self.settings = settings
        self._client = self._new_client()
        self._collection = self._client.collections.use(settings.collection)
        self._stale = False
        # Requests that fail together would otherwise each build a client, leaking channels.
        self._connecting = asyncio.Lock()

    def _new_client(self) -> WeaviateAsyncClient:
        settings = self.settings
        key = read_secret(settings.api_key_file)
        grpc_host, grpc_port, grpc_secure = settings.grpc_address
        return weaviate.use_async_with_custom(
            http_host=settings.http_host,
            http_port=settings.http_port,
            http_secure=settings.secure,
            grpc_host=grpc_host,
            grpc_port=grpc_port,
            grpc_secure=grpc_secure,
            auth_credentials=Auth.api_key(key) if key else None,
            additional_config=AdditionalConfig(
                timeout=Timeout(
                    init=settings.timeout, query=settings.timeout, insert=settings.timeout * 6
                )
            ),
            skip_init_checks=True,
        )

    @property
    def name(self) -> str:
        return self.settings.collection

    async def _connect(self) -> None:
        """Connect on first use, so a Weaviate that is down at start-up delays nothing; after
        a failure, with a new client, as a gRPC channel that failed backs off for minutes.
        One caller at a time: the others find the new client connected."""
        async with self._connecting:
            if self._stale:
                with contextlib.suppress(Exception):
                    await self._client.close()
                self._client = self._new_client()
                self._collection = self._client.collections.use(self.settings.collection)
                self._stale = False
            if not self._client.is_connected():
                await self._client.connect()

    async def ready(self, *, every_copy: bool = False) -> None:
        """Raises StoreError unless Weaviate answers ready; with `every_copy`, unless as many
        of its nodes are healthy as the collection keeps copies (a collection of several
        copies can be made, or written, only then)."""
        try:
            await self._connect()
            if not await self._client.is_ready():
                raise StoreError(f"Weaviate at {self.settings.weaviate_url} is not ready")
            factor = self.settings.replication_factor
            if every_copy and factor > 1:
                nodes = await self._client.cluster.nodes()
                healthy = sum(1 for node in nodes if node.status == "HEALTHY")
                if healthy < factor:
                    raise StoreError(
                        f"Weaviate at {self.settings.weaviate_url} has {healthy} healthy "
                        f"node(s) of the {factor} that hold the collection's copies"
                    )
        except WeaviateBaseError as error:
            raise self._error("reach", error) from None

    async def ensure_collection(self, model: str, dimensions: int) -> None:
        """Create the collection on first use, recording the embedding model; refuse to mix
        vectors of another model into an existing one."""
        description = f"Tertulia knowledge base; embeddings: {model} ({dimensions} dimensions)"
        try:
            await self._connect()
            if await self._client.collections.exists(self.name):
                config = await self._collection.config.get()
                if config.description and config.description != description:
                    raise StoreError(
                        f"collection {self.name} holds other embeddings ({config.description}); "
                        f"embedding with {model} ({dimensions} dimensions) would mix them: "
                        "ingest into another collection or delete this one first"
                    )
                return
            await self._client.collections.create(
                self.name,
                description=description,
                properties=[
                    Property(name="text", data_type=DataType.TEXT),
                    Property(name="title", data_type=DataType.TEXT),
                    Property(name="section", data_type=DataType.TEXT),
                    _keyword("source"),
                    Property(name="chunk_index", data_type=DataType.INT),
                    Property(name="chunk_count", data_type=DataType.INT),
                    _keyword("content_hash"),
                    _keyword("fingerprint"),
                ],
                vector_config=Configure.Vectors.self_provided(
                    vector_index_config=Configure.VectorIndex.hnsw(
                        distance_metric=VectorDistances.COSINE
                    )
                ),
                replication_config=Configure.replication(
                    factor=self.settings.replication_factor,
                    # A node that was away catches up by itself, in the background (the
                    # default from Weaviate 1.38 on, which ignores the field).
                    async_enabled=True if self.settings.replication_factor > 1 else None,
                ),
            )
        except WeaviateBaseError as error:
            raise self._error("create the collection in", error) from None

    async def inventory(self) -> dict[str, StoredDocument]:
        """Every stored document: its fingerprint and its chunks' ids and indexes."""
        documents: dict[str, StoredDocument] = defaultdict(StoredDocument)
        try:
            await self._connect()
            if not await self._client.collections.exists(self.name):
                return {}
            async for item in self._collection.iterator(
                return_properties=["source", "chunk_index", "chunk_count", "fingerprint"]
            ):
                properties = item.properties
                document = documents[str(properties["source"])]
                document.chunks[item.uuid] = _integer(properties.get("chunk_index"))
                document.marks.add(
                    (
                        str(properties.get("fingerprint") or ""),
                        _integer(properties.get("chunk_count")),
                    )
                )
        except WeaviateBaseError as error:
            raise self._error("list the documents in", error) from None
        return dict(documents)

    async def insert(self, chunks: Sequence[NewChunk]) -> None:
        if not chunks:
            return
        objects = [
            DataObject(properties=chunk.properties, uuid=chunk.id, vector=chunk.vector)
            for chunk in chunks
        ]
        try:
            await self._connect()
            result = await self._collection.data.insert_many(objects)
        except WeaviateBaseError as error:
            raise self._error("write to", error) from None
        if result.has_errors:
            first = next(iter(result.errors.values()))
            raise StoreError(f"Weaviate refused {len(result.errors)} chunks: {first.message}")

    async def update(self, updates: Iterable[tuple[uuid.UUID, dict[str, Any]]]) -> None:
        """Change kept chunks' properties (index, fingerprint) without touching their vectors."""
        try:
            await self._connect()
            for chunk, properties in updates:
                await self._collection.data.update(uuid=chunk, properties=properties)
        except WeaviateBaseError as error:
            raise self._error("update chunks in", error) from None

    async def delete(self, ids: Sequence[uuid.UUID]) -> None:
        for start in range(0, len(ids), 1000):
            batch = list(ids[start : start + 1000])
            try:
                await self._connect()
                await self._collection.data.delete_many(where=Filter.by_id().contains_any(batch))
            except WeaviateBaseError as error:
                raise self._error("delete chunks from", error) from None

    async def delete_source(self, source: str) -> int:
        try:
            await self._connect()
            result = await self._collection.data.delete_many(
                where=Filter.by_property("source").equal(source)
            )
        except WeaviateBaseError as error:
            raise self._error("delete a document from", error) from None
        return int(result.successful)

    async def count(self) -> int:
        try:
            await self._connect()
            if not await self._client.collections.exists(self.name):
                return 0
            result = await self._collection.aggregate.over_all(total_count=True)
        except WeaviateBaseError as error:
            raise self._error("count chunks in", error) from None
        return int(result.total_count or 0)

    async def headings(self, limit: int = 200) -> list[tuple[str, str]]:
        """The (title, section) of up to `limit` stored chunks, in the store's order, each
        once: what the knowledge base is about, for the web chat's example questions."""
        try:
            await self._connect()
            if not await self._client.collections.exists(self.name):
                return []
            result = await self._collection.query.fetch_objects(
                limit=limit, return_properties=["title", "section"]
            )
        except WeaviateBaseError as error:
            raise self._error("list the headings in", error) from None
        found = (
            (str(item.properties.get("title") or ""), str(item.properties.get("section") or ""))
            for item in result.objects
        )
        return list(dict.fromkeys(found))

    async def search(
        self,
        query: str,
        vector: list[float] | None,
        *,
        limit: int,
        alpha: float,
        filters: SearchFilters | None = None,
    ) -> list[Hit]:
        """Hybrid search: BM25 over text, title and section fused with the vector's nearest
        chunks by relative score. alpha 0 is BM25 alone, 1 the vector alone. A search that
        fails on a connection made before is tried once more on a new one: a gRPC channel
        stays with the Weaviate node it first reached, and that node may have gone away."""
        search = functools.partial(self._search, query, vector, limit, alpha, filters)
        reused = self._client.is_connected()
        try:
            return await self._within_timeout(search)
        except _SearchFailed:
            if not reused:
                raise
        return await self._within_timeout(search)

    async def _within_timeout(self, search: Callable[[], Awaitable[list[Hit]]]) -> list[Hit]:
        """One search, bounded by the timeout (which is not tried again: it took its time)."""
        try:
            return await asyncio.wait_for(search(), self.settings.timeout)
        except TimeoutError:
            self._stale = True
            raise StoreError(
                f"Weaviate at {self.settings.weaviate_url} did not answer a search within "
                f"{self.settings.timeout:g} s"
            ) from None

    async def _search(
        self,
        query: str,
        vector: list[float] | None,
        limit: int,
        alpha: float,
        filters: SearchFilters | None,
    ) -> list[Hit]:
        where = filters.weaviate() if filters else None
        client = None
        try:
            await self._connect()
            client, collection = self._client, self._collection
            if self.settings.replication_factor > 1:
                # One copy answers: a search goes on while a node is away (writes still
                # wait for a quorum of copies).
                collection = collection.with_consistency_level(ConsistencyLevel.ONE)
            if vector is None or alpha == 0.0:
                result = await collection.query.bm25(
                    query=query,
                    query_properties=_SEARCHED,
                    limit=limit,
                    filters=where,
                    return_properties=_RETURNED,
                    return_metadata=MetadataQuery(score=True),
                )
            elif alpha == 1.0:
                result = await collection.query.near_vector(
                    near_vector=vector,
                    limit=limit,
                    filters=where,
                    return_properties=_RETURNED,
                    return_metadata=MetadataQuery(distance=True),
                )
            else:
                result = await collection.query.hybrid(
                    query=query,
                    vector=vector,
                    alpha=alpha,
                    query_properties=_SEARCHED,
                    fusion_type=HybridFusion.RELATIVE_SCORE,
                    limit=limit,
                    filters=where,
                    return_properties=_RETURNED,
                    return_metadata=MetadataQuery(score=True),
                )
        except WeaviateBaseError as error:
            raise _SearchFailed(str(self._error("search", error))) from None
        except asyncio.CancelledError:
            # gRPC's asyncio calls raise CancelledError when their channel is closed beneath
            # them: another request found the client broken and replaced it (or, if it is
            # still the client, it is broken now). Only a cancellation of this task (a
            # timeout, the caller gone) is one.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            if client is not None and client is self._client:
                self._stale = True
            raise _SearchFailed(
                f"the search's connection to Weaviate at {self.settings.weaviate_url} was closed"
            ) from None
        hits = []
        for item in result.objects:
            properties = item.properties
            metadata = item.metadata
            if metadata.distance is not None:
                score = 1.0 - float(metadata.distance)
            else:
                score = float(metadata.score or 0.0)
            hits.append(
                Hit(
                    text=str(properties.get("text") or ""),
                    source=str(properties.get("source") or ""),
                    title=str(properties.get("title") or ""),
                    section=str(properties.get("section") or ""),
                    chunk_index=_integer(properties.get("chunk_index")),
                    score=round(score, 4),
                )
            )
        return hits

    @property
    def _backend(self) -> BackupStorage:
        if self.settings.backup_backend == "s3":
            return BackupStorage.S3
        return BackupStorage.FILESYSTEM

    async def backup(self, backup_id: str) -> float:
        """Back the collection up under `backup_id` with Weaviate's backup module (the
        filesystem or S3), waiting until it is written; its size in bytes. Raises StoreError
        when Weaviate cannot (no backup module, a taken id, a bucket it cannot write)."""
        try:
            await self._connect()
            done = await self._client.backup.create(
                backup_id,
                self._backend,
                include_collections=[self.name],
                wait_for_completion=True,
            )
        except WeaviateBaseError as error:
            raise self._error("back up", error) from None
        return _succeeded(f"backup {backup_id} of {self.name}", done).size

    async def backups(self) -> list[BackupListReturn]:
        """The backups Weaviate's backup backend holds, oldest first."""
        try:
            await self._connect()
            return await self._client.backup.list_backups(
                self._backend, sort_by_starting_time_asc=True
            )
        except WeaviateBaseError as error:
            raise self._error("list the backups of", error) from None

    async def restore(self, backup_id: str, *, replace: bool = False) -> None:
        """Restore the collection from `backup_id`, waiting until it is back. Weaviate
        restores only into a collection that does not exist: with `replace` the current one
        is deleted first, else its presence is an error."""
        try:
            await self._connect()
            if await self._client.collections.exists(self.name):
                if not replace:
                    raise StoreError(
                        f"collection {self.name} exists: restoring {backup_id} would replace "
                        "it (pass --replace to delete it first)"
                    )
                await self._client.collections.delete(self.name)
            done = await self._client.backup.restore(
                backup_id,
                self._backend,
                include_collections=[self.name],
                wait_for_completion=True,
            )
        except WeaviateBaseError as error:
            raise self._error("restore", error) from None
        _succeeded(f"restore of {backup_id} into {self.name}", done)

    async def aclose(self) -> None:
        await self._client.close()

    def _error(self, action: str, error: WeaviateBaseError) -> StoreError:
        self._stale = True
        message = getattr(error, "message", None) or str(error)
        return StoreError(
            f"cannot {action} Weaviate at {self.settings.weaviate_url} "
            f"(collection {self.name}): {message}"
        )


def _succeeded(what: str, done: BackupReturn) -> BackupReturn:
    """`done`, unless the backup or restore it reports did not succeed."""
    if done.status != BackupStatus.SUCCESS:
        raise StoreError(f"{what} ended {done.status.value}: {done.error or 'no reason given'}")
    return done


async def find(
    store: Store,
    embedder: Embedder,
    query: str,
    *,
    limit: int,
    alpha: float,
    filters: SearchFilters | None = None,
    bm25_when_embedding_fails: bool = False,
) -> list[Hit]:
    """Embed the question (unless alpha is 0) and search. An embeddings failure raises
    EmbeddingError, or with `bm25_when_embedding_fails` is logged and the search goes on
    with BM25 alone."""
    vector: list[float] | None = None
    if alpha > 0.0:
        try:
            vector = await embedder.embed_one(query)
        except EmbeddingError as error:
            if not bm25_when_embedding_fails:
                raise
            logger.warning(
                "embedding the question failed; searching with BM25 alone",
                extra={"error": str(error)},
            )
    return await store.search(query, vector, limit=limit, alpha=alpha, filters=filters)


def _keyword(name: str) -> Property:
    """A text property matched whole by filters and left out of BM25."""
    return Property(
        name=name, data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False
    )


def _integer(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0
