"""What a search of the knowledge base takes and gives, and how it fails: without Weaviate's
client, so the gateway imports it whether its knowledge base is on or not (the client costs a
second of every start)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StoreError(RuntimeError):
    """Weaviate failed or refused; the message says what and where, never a key."""


class Hit(BaseModel):
    """One passage found, with its metadata and score (higher is better)."""

    text: str
    source: str
    title: str
    section: str
    chunk_index: int
    score: float


class SearchFilters(BaseModel):
    """Only passages whose metadata match; `*` and `?` are wildcards."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = Field(None, max_length=512, description="Source path, e.g. `faq/*`.")
    title: str | None = Field(None, max_length=512, description="Document title.")
    section: str | None = Field(None, max_length=512, description="Section heading path.")

    def weaviate(self) -> Any:
        from weaviate.classes.query import Filter

        parts = []
        if self.source:
            parts.append(Filter.by_property("source").like(self.source))
        if self.title:
            parts.append(Filter.by_property("title").like(self.title))
        if self.section:
            parts.append(Filter.by_property("section").like(self.section))
        if not parts:
            return None
        return Filter.all_of(parts) if len(parts) > 1 else parts[0]
