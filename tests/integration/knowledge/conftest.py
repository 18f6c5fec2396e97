"""A real Weaviate for the knowledge-base tests, and the documents they ingest."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tertulia.knowledge.embeddings import Embedder
from tertulia.knowledge.settings import KnowledgeSettings
from tertulia.knowledge.store import Store, find
from tests.testbed.documents import minimal_pdf
from tests.testbed.process import ManagedProcess
from tests.testbed.servers import WeaviateAddress, start_gateway, start_weaviate

TERTULIA = str(Path(sys.executable).with_name("tertulia"))

DOCUMENTS = {
    "harbour/berths.md": """# Berths

Ships moor at the north quay from nine in the morning. The quay master assigns berths.

## Fees

A small boat pays ten crowns a night; a cargo ship pays by its length.
""",
    "harbour/tides.txt": "High tide comes twice a day.\\n\\n"
    "The lighthouse keeper posts the tide table on the pier every Monday.",
    "town/market.html": "<html><head><title>Market</title></head><body><h1>Market</h1>"
    "<p>The fish market opens at dawn on Saturdays behind the old customs house.</p>"
    "</body></html>",
}
PDF_TEXT = ["Cranes unload containers onto rail wagons.", "Forklifts stack them three high."]


@dataclass
class KnowledgeBase:
    address: WeaviateAddress
    key_file: Path
    embeddings_url: str
    collection: str
    replication_factor: int = 1
    grpc_url: str | None = None  # gRPC elsewhere than the HTTP host's grpc_port
    backup_backend: str = "filesystem"

    def env(self) -> dict[str, str]:
        return {
            "TERTULIA_KB_WEAVIATE_URL": self.address.url,
            "TERTULIA_KB_GRPC_PORT": str(self.address.grpc_port),
            **({"TERTULIA_KB_GRPC_URL": self.grpc_url} if self.grpc_url else {}),
            "TERTULIA_KB_API_KEY_FILE": str(self.key_file),
            "TERTULIA_KB_COLLECTION": self.collection,
            "TERTULIA_KB_REPLICATION_FACTOR": str(self.replication_factor),
            "TERTULIA_KB_BACKUP_BACKEND": self.backup_backend,
            "TERTULIA_KB_EMBEDDING__URL": self.embeddings_url,
        }

    def gateway_settings(self) -> dict[str, str]:
        return {
            f"KNOWLEDGE_BASE__{key.removeprefix('TERTULIA_KB_')}": value
            for key, value in self.env().items()
        } | {"KNOWLEDGE_BASE__ENABLED": "true"}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run(
            [TERTULIA, "kb", *args],
            env={**os.environ, **self.env(), "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def objects(self) -> dict[str, dict[str, Any]]:
        """Every stored chunk by id, read back through Weaviate's REST API."""
        response = httpx.get(
            f"{self.address.url}/v1/objects",
            params={"class": self.collection, "limit": 1000},
            headers={"Authorization": f"Bearer {self.address.api_key}"},
            timeout=10,
        )
        response.raise_for_status()
        return {item["id"]: item for item in response.json().get("objects") or []}


QUERIES = [
    "When can I buy fresh fish?",
    "Where do ships moor?",
    "What does a small boat pay for a night?",
    "Who assigns the berths?",
    "How often does high tide come?",
    "Where is the tide table posted?",
    "What do cranes unload?",
    "How high are containers stacked?",
    "When does the market open?",
    "What does a cargo ship pay?",
]


def results(knowledge_base: KnowledgeBase) -> list[list[tuple[str, int, float]]]:
    """The top three passages of each query, as the gateway retrieves them."""

    async def search() -> list[list[tuple[str, int, float]]]:
        settings = KnowledgeSettings(
            weaviate_url=knowledge_base.address.url,
            grpc_port=knowledge_base.address.grpc_port,
            api_key_file=knowledge_base.key_file,
            collection=knowledge_base.collection,
            replication_factor=knowledge_base.replication_factor,
            grpc_url=knowledge_base.grpc_url,
            embedding={"url": knowledge_base.embeddings_url},
        )
        store, embedder = Store(settings), Embedder(settings.embedding)
        try:
            found = []
            for query in QUERIES:
                hits = await find(store, embedder, query, limit=3, alpha=settings.alpha)
                found.append([(hit.source, hit.chunk_index, round(hit.score, 4)) for hit in hits])
            return found
        finally:
            await store.aclose()
            await embedder.aclose()

    return asyncio.run(search())


def write_documents(folder: Path) -> Path:
    for name, text in DOCUMENTS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (folder / "manuals").mkdir(exist_ok=True)
    (folder / "manuals" / "cranes.pdf").write_bytes(minimal_pdf(PDF_TEXT, "Crane manual"))
    return folder


def start_harbour_gateway(
    workdir: Path,
    weaviate: WeaviateAddress,
    embeddings_url: str,
    collection: str,
    settings: dict[str, str],
    *,
    name: str,
) -> tuple[ManagedProcess, str]:
    """A gateway without API keys (local use) whose knowledge base, the collection
    `collection`, holds DOCUMENTS, uploaded through its admin API."""
    key_file = workdir / "weaviate-key"
    key_file.write_text(weaviate.api_key)
    knowledge_base = KnowledgeBase(weaviate, key_file, embeddings_url, collection)
    process, url = start_gateway(
        workdir,
        {"RATE_LIMIT__ENABLED": "false", **settings, **knowledge_base.gateway_settings()},
        name=name,
    )
    documents = [{"source": source, "content": text} for source, text in DOCUMENTS.items()]
    uploaded = httpx.post(
        f"{url}/admin/knowledge/documents", json={"documents": documents}, timeout=120
    )
    assert uploaded.status_code == 200, uploaded.text
    return process, url


@pytest.fixture(scope="package")
def weaviate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeaviateAddress]:
    process, address = start_weaviate(tmp_path_factory.mktemp("weaviate"))
    yield address
    process.stop()


@pytest.fixture
def knowledge_base(weaviate: WeaviateAddress, embeddings_url: str, tmp_path: Path) -> KnowledgeBase:
    """A fresh collection in the shared Weaviate for one test."""
    key_file = tmp_path / "weaviate-key"
    key_file.write_text(weaviate.api_key)
    return KnowledgeBase(weaviate, key_file, embeddings_url, f"T{uuid.uuid4().hex[:12]}")
