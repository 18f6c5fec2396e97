"""Where the knowledge base lives and how it is built: shared by the gateway and the CLI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from tertulia.common.logging import protect


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingSettings(_Section):
    """An OpenAI-compatible /v1/embeddings: vLLM, Ollama or llama.cpp with embeddings on."""

    url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8000/v1"), description="Base URL, ending in /v1."
    )
    model: str = Field("", description="Model id sent upstream; empty: the server's only model.")
    api_key_file: Path | None = Field(None, description="File holding a bearer token, if needed.")
    batch_size: int = Field(32, ge=1, le=2048, description="Texts per embeddings request.")
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for one request.")
    query_cache_size: int = Field(
        4096,
        ge=0,
        le=1_000_000,
        description="Questions whose embeddings each process keeps (about 1.6 KB each for "
        "384 dimensions), so a question asked again costs no embedding; 0 keeps none.",
    )


class KnowledgeSettings(_Section):
    """The Weaviate collection, its embedding model, chunking and search."""

    weaviate_url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8080"), description="Weaviate's HTTP address."
    )
    grpc_port: int = Field(50051, ge=1, le=65535, description="Weaviate's gRPC port, same host.")
    grpc_url: HttpUrl | None = Field(
        None,
        description="Weaviate's gRPC address where it is not the HTTP host's `grpc_port` "
        "(Weaviate Cloud: https://grpc-HOST); https means TLS.",
    )
    api_key_file: Path | None = Field(None, description="File holding Weaviate's API key.")
    collection: str = Field(
        "Tertulia",
        min_length=1,
        description="The collection (one per ChatBot); made a valid Weaviate class name.",
    )
    replication_factor: int = Field(
        1,
        ge=1,
        le=9,
        description="Copies of each chunk across Weaviate's nodes, set when the collection is "
        "made. Above 1, searches read one copy, so a node away does not stop them.",
    )
    backup_backend: Literal["filesystem", "s3"] = Field(
        "filesystem",
        description="Where Weaviate writes backups: its backup-filesystem module (a folder on "
        "its host) or backup-s3 (a bucket).",
    )
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Hybrid search weight: 0 is BM25 only, 1 vectors only."
    )
    top_k: int = Field(4, ge=1, le=50, description="Passages retrieved per message.")
    chunk_tokens: int = Field(200, ge=16, le=2048, description="Largest chunk, in tokens.")
    chunk_overlap: int = Field(40, ge=0, le=512, description="Tokens repeated between chunks.")
    timeout: float = Field(
        5.0, gt=0, description="Seconds a search may take; writes may take six times as long."
    )

    @field_validator("collection")
    @classmethod
    def _class_name(cls, value: str) -> str:
        return collection_name(value)

    @property
    def http_host(self) -> str:
        return urlsplit(str(self.weaviate_url)).hostname or "127.0.0.1"

    @property
    def http_port(self) -> int:
        parts = urlsplit(str(self.weaviate_url))
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def secure(self) -> bool:
        return urlsplit(str(self.weaviate_url)).scheme == "https"

    @property
    def grpc_address(self) -> tuple[str, int, bool]:
        """gRPC's host, port, and whether it is TLS."""
        if self.grpc_url is None:
            return self.http_host, self.grpc_port, self.secure
        parts = urlsplit(str(self.grpc_url))
        secure = parts.scheme == "https"
        return parts.hostname or self.http_host, parts.port or (443 if secure else 80), secure


def collection_name(name: str) -> str:
    """A Weaviate class name from a ChatBot name: `help-desk` becomes `Help_desk`."""
    cleaned = re.sub(r"[^0-9A-Za-z_]", "_", name.strip())
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"C{cleaned}"
    return cleaned[0].upper() + cleaned[1:]


def read_secret(path: Path | None) -> str | None:
    """A value from a mounted Secret, registered so that no log line carries it."""
    return protect(path.read_text().strip()) if path is not None else None
