"""Retrieval quality and speed of the knowledge base, on this project's own documentation.

The corpus is `bench/data/rag-corpus/`: `README.md` and `docs/*.md` frozen as they were when
the questions were written, so editing the docs never changes or breaks the measurement.
`bench/data/rag-questions.yaml` holds questions written by hand, each with the document and a
phrase of the passage that answers it. Real parts: Weaviate built from source,
all-MiniLM-L6-v2 served by llama.cpp at /v1/embeddings.

Quality: recall@1, recall@5 and MRR (of the first answering chunk in the top 5) for BM25
alone (alpha 0), vectors alone (alpha 1) and hybrid (alpha 0.5). Target: hybrid recall@5 at
least 0.9, and above both single methods.

Speed, each against a baseline from the same run: ingestion in chunks per second against
embedding the same texts alone (the floor the embedding model sets); query p50/p99 with the
collection filled to 10,000 chunks, hybrid against BM25 alone. The filler chunks are the
corpus's chunks with their words shuffled and their vectors jittered: they cost a search
what real chunks cost, and are not used for the quality figures.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench._report import figure, sized
from tertulia.knowledge.chunking import chunk_document
from tertulia.knowledge.documents import parse
from tertulia.knowledge.embeddings import Embedder
from tertulia.knowledge.ingest import Ingestor, Input
from tertulia.knowledge.settings import KnowledgeSettings
from tertulia.knowledge.store import NewChunk, Store
from tests.testbed.servers import start_embedding_server, start_weaviate

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = REPO / "bench" / "data" / "rag-questions.yaml"
CORPUS = REPO / "bench" / "data" / "rag-corpus"
METHODS = {"bm25": 0.0, "vector": 1.0, "hybrid": 0.5}
SCALE = sized(10_000, 600)
QUERIES_AT_SCALE = sized(300, 20)


@dataclass(frozen=True)
class Question:
    text: str
    source: str
    passage: str


def _flat(text: str) -> str:
    return " ".join(text.split())


def corpus() -> list[Input]:
    """The frozen documents, each named by its path as it was in the repository."""
    paths = [CORPUS / "README.md", *sorted((CORPUS / "docs").glob("*.md"))]
    return [
        Input(path.relative_to(CORPUS).as_posix(), path.read_bytes(), "markdown") for path in paths
    ]


def questions(inputs: list[Input], settings: KnowledgeSettings) -> list[Question]:
    """The retrieval set, checked: every phrase must be in a chunk of its document."""
    loaded = [
        Question(item["q"], item["source"], item["passage"])
        for item in yaml.safe_load(QUESTIONS.read_text())
    ]
    chunks: dict[str, list[str]] = {}
    for item in inputs:
        document = parse(item.source, item.data, item.kind)
        chunks[item.source] = [
            _flat(chunk.text)
            for chunk in chunk_document(document, settings.chunk_tokens, settings.chunk_overlap)
        ]
    stale = [
        question
        for question in loaded
        if not any(_flat(question.passage) in text for text in chunks.get(question.source, []))
    ]
    if stale:
        listing = "\n".join(f"  {q.source}: {q.passage!r}" for q in stale)
        raise SystemExit(f"{len(stale)} questions' passages are not in the corpus:\n{listing}")
    return loaded


def _rank(question: Question, hits: list[tuple[str, str]]) -> int | None:
    for rank, (source, text) in enumerate(hits, start=1):
        if source == question.source and _flat(question.passage) in _flat(text):
            return rank
    return None


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def run(workdir: Path, settings: KnowledgeSettings) -> None:
    inputs = corpus()
    asked = questions(inputs, settings)
    store, embedder = Store(settings), Embedder(settings.embedding)
    try:
        ingestor = Ingestor(settings, store, embedder)
        await ingestor.prepare()
        started = time.perf_counter()
        report = await ingestor.ingest(inputs)
        ingest_seconds = time.perf_counter() - started
        written = report.chunks["written"]
        texts = [
            chunk.embedded_text
            for item in inputs
            for chunk in chunk_document(
                parse(item.source, item.data, item.kind),
                settings.chunk_tokens,
                settings.chunk_overlap,
            )
        ]
        started = time.perf_counter()
        vectors = await embedder.embed(texts)
        embed_seconds = time.perf_counter() - started
        print(
            f"corpus: {len(inputs)} documents, {written} chunks; {len(asked)} questions",
            flush=True,
        )
        ingest_rate, embed_rate = written / ingest_seconds, len(texts) / embed_seconds
        print(
            f"ingestion: {ingest_rate:.1f} chunks/s; embedding alone {embed_rate:.1f} chunks/s "
            f"(baseline); ratio {ingest_rate / embed_rate:.2f}x",
            flush=True,
        )

        started = time.perf_counter()
        question_vectors = await embedder.embed([question.text for question in asked])
        print(
            f"questions embedded: {len(asked) / (time.perf_counter() - started):.1f} sentences/s",
            flush=True,
        )
        results: dict[str, dict[str, float]] = {}
        for name, alpha in METHODS.items():
            ranks = []
            for question, vector in zip(asked, question_vectors, strict=True):
                hits = await store.search(question.text, vector, limit=5, alpha=alpha)
                ranks.append(_rank(question, [(hit.source, hit.text) for hit in hits]))
            results[name] = {
                "recall@1": sum(rank == 1 for rank in ranks) / len(ranks),
                "recall@5": sum(rank is not None for rank in ranks) / len(ranks),
                "mrr": sum(1 / rank for rank in ranks if rank) / len(ranks),
            }
        print("\nmethod   recall@1  recall@5  MRR")
        for name, figures in results.items():
            print(
                f"{name:8} {figures['recall@1']:8.3f}  {figures['recall@5']:8.3f}  "
                f"{figures['mrr']:.3f}"
            )
        hybrid = results["hybrid"]["recall@5"]
        ok = hybrid >= 0.9 and all(
            hybrid > results[name]["recall@5"] for name in ("bm25", "vector")
        )
        print(
            f"target hybrid recall@5 >= 0.9 and above BM25 and vectors: "
            f"{'met' if ok else 'NOT met'}\n",
            flush=True,
        )
        for name in ("bm25", "vector"):
            figure("rag", f"recall@5, {name}", results[name]["recall@5"], "")
        figure("rag", "recall@5, hybrid", hybrid, "", ">= 0.9, above both", ok)
        figure("rag", "ingestion against embedding alone", ingest_rate / embed_rate, "x")

        await _fill(store, texts, vectors, SCALE - written)
        print(f"collection filled to {await store.count()} chunks", flush=True)
        latencies: dict[str, list[float]] = {name: [] for name in ("bm25", "hybrid")}
        picks = random.Random(7).choices(
            list(zip(asked, question_vectors, strict=True)), k=QUERIES_AT_SCALE
        )
        for question, vector in picks:
            for name in latencies:
                started = time.perf_counter()
                await store.search(question.text, vector, limit=5, alpha=METHODS[name])
                latencies[name].append((time.perf_counter() - started) * 1000)
        # Each question once: a question asked again is the embedder's cache, not the model.
        embed_latency = []
        for text in list(dict.fromkeys(question.text for question, _ in picks))[:100]:
            started = time.perf_counter()
            await embedder.embed_one(text)
            embed_latency.append((time.perf_counter() - started) * 1000)
        p50 = {name: statistics.median(values) for name, values in latencies.items()}
        p99 = {name: _percentile(values, 0.99) for name, values in latencies.items()}
        print(f"queries at {SCALE} chunks ({QUERIES_AT_SCALE} each, top 5):")
        for name in latencies:
            print(f"  {name:7} p50 {p50[name]:6.1f} ms  p99 {p99[name]:6.1f} ms")
        print(
            f"  hybrid / BM25 (baseline): p50 {p50['hybrid'] / p50['bm25']:.2f}x, "
            f"p99 {p99['hybrid'] / p99['bm25']:.2f}x"
        )
        figure(
            "rag",
            f"hybrid query p50 at {SCALE} chunks, against BM25",
            p50["hybrid"] / p50["bm25"],
            "x",
        )
        print(
            f"  embedding a question: p50 {statistics.median(embed_latency):.1f} ms, "
            f"p99 {_percentile(embed_latency, 0.99):.1f} ms"
        )
    finally:
        await embedder.aclose()
        await store.aclose()


async def _fill(store: Store, texts: list[str], vectors: list[list[float]], count: int) -> None:
    draw = random.Random(11)
    batch: list[NewChunk] = []
    for number in range(count):
        index = draw.randrange(len(texts))
        words = texts[index].split()
        draw.shuffle(words)
        jittered = [value + draw.gauss(0.0, 0.02) for value in vectors[index]]
        norm = sum(value * value for value in jittered) ** 0.5
        batch.append(
            NewChunk(
                uuid.uuid4(),
                {
                    "text": " ".join(words),
                    "title": "filler",
                    "section": "",
                    "source": f"filler/{number}.md",
                    "chunk_index": 0,
                    "chunk_count": 1,
                    "content_hash": "",
                    "fingerprint": "",
                },
                [value / norm for value in jittered],
            )
        )
        if len(batch) == 500:
            await store.insert(batch)
            batch = []
    await store.insert(batch)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-rag-") as folder:
        workdir = Path(folder)
        weaviate, address = start_weaviate(workdir / "weaviate")
        embeddings, embeddings_url = start_embedding_server(workdir)
        try:
            key_file = workdir / "weaviate-key"
            key_file.write_text(address.api_key)
            settings = KnowledgeSettings.model_validate(
                {
                    "weaviate_url": address.url,
                    "grpc_port": address.grpc_port,
                    "api_key_file": key_file,
                    "collection": "BenchDocs",
                    "embedding": {"url": embeddings_url},
                }
            )
            asyncio.run(run(workdir, settings))
        finally:
            embeddings.stop()
            weaviate.stop()


if __name__ == "__main__":
    main()
