"""The admin API of the knowledge base: ingest, list, delete and search documents.

Only the identities in `admin_identities` may call it (any caller when API keys are off,
which is for local use only); the gate (gate.py) refuses everyone else before their body is
read. Bulk ingestion of folders is `tertulia kb ingest`; this API takes documents in the
request body, text or base64 (PDF), up to `knowledge_base.max_upload_bytes`, a size only an
admin may send.
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from tertulia.gateway.deps import IdentityDep, ServicesDep
from tertulia.gateway.errors import (
    DocumentNotFound,
    Forbidden,
    InvalidInput,
    KnowledgeBaseDisabled,
    KnowledgeBaseUnavailable,
)
from tertulia.gateway.pipeline.auth import is_admin
from tertulia.gateway.pipeline.retrieval import WeaviateRetriever
from tertulia.gateway.schemas import ErrorBody
from tertulia.knowledge.documents import SUFFIXES, kind_of
from tertulia.knowledge.embeddings import EmbeddingError
from tertulia.knowledge.results import Hit, SearchFilters, StoreError

if TYPE_CHECKING:
    from tertulia.knowledge.ingest import Input

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 10.0
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (401, 403, 404, 413, 422, 503)
}


async def knowledge_base(services: ServicesDep, identity: IdentityDep) -> WeaviateRetriever:
    # The gate refused the others before reading their bodies; checked again where it counts.
    if not is_admin(identity, services.api_keys, services.settings):
        raise Forbidden(f"identity {identity.name!r} may not use the admin API")
    if not isinstance(services.retriever, WeaviateRetriever):
        raise KnowledgeBaseDisabled("the knowledge base is not enabled for this gateway")
    return services.retriever


KnowledgeBaseDep = Annotated[WeaviateRetriever, Depends(knowledge_base)]
router = APIRouter(prefix="/admin/knowledge", tags=["knowledge base"], responses=_ERRORS)


class DocumentUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[^\x00]+$",
        description="The document's name, e.g. `faq/billing.md`; its suffix says its kind.",
    )
    content: str = Field(description="The document: text, or base64 when encoding is base64.")
    encoding: Literal["text", "base64"] = "text"


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentUpload] = Field(min_length=1, max_length=1000)
    prune: bool = Field(False, description="Delete stored documents not in this request.")


class IngestReport(BaseModel):
    documents: dict[str, int]
    chunks: dict[str, int]
    failures: dict[str, str]


class StoredSource(BaseModel):
    source: str
    chunks: int


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4000)
    top_k: int | None = Field(None, ge=1, le=50)
    alpha: float | None = Field(None, ge=0.0, le=1.0, description="0 BM25 only, 1 vectors only.")
    filters: SearchFilters | None = None


def _unavailable(error: Exception) -> KnowledgeBaseUnavailable:
    logger.warning("knowledge base request failed", extra={"error": str(error)})
    return KnowledgeBaseUnavailable(str(error), retry_after=RETRY_AFTER_SECONDS)


def _inputs(request: IngestRequest) -> list[Input]:
    from tertulia.knowledge.ingest import Input

    inputs = []
    for document in request.documents:
        kind = kind_of_source(document.source)
        if document.encoding == "base64":
            try:
                data = base64.b64decode(document.content, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput(f"{document.source}: content is not valid base64") from None
        else:
            data = document.content.encode()
        inputs.append(Input(document.source, data, kind))
    return inputs


def kind_of_source(source: str) -> str:
    kind = kind_of(PurePosixPath(source))
    if kind is None:
        known = ", ".join(sorted(SUFFIXES))
        raise InvalidInput(f"{source}: unknown document kind; the suffix must be one of {known}")
    return kind


@router.post("/documents")
async def ingest(request: IngestRequest, knowledge: KnowledgeBaseDep) -> IngestReport:
    """Ingest documents: unchanged ones are skipped, changed ones replaced."""
    from tertulia.knowledge.ingest import Ingestor

    inputs = _inputs(request)
    ingestor = Ingestor(knowledge.settings, knowledge.store, knowledge.embedder)
    try:
        report = await ingestor.ingest(inputs, prune=request.prune)
    except (StoreError, EmbeddingError) as error:
        raise _unavailable(error) from None
    return IngestReport.model_validate(report.as_dict())


@router.get("/documents")
async def list_documents(knowledge: KnowledgeBaseDep) -> list[StoredSource]:
    try:
        inventory = await knowledge.store.inventory()
    except StoreError as error:
        raise _unavailable(error) from None
    return [
        StoredSource(source=source, chunks=len(document.chunks))
        for source, document in sorted(inventory.items())
    ]


@router.delete("/documents", status_code=204)
async def delete_document(
    knowledge: KnowledgeBaseDep,
    source: Annotated[str, Query(min_length=1, max_length=1024)],
) -> Response:
    try:
        deleted = await knowledge.store.delete_source(source)
    except StoreError as error:
        raise _unavailable(error) from None
    if not deleted:
        raise DocumentNotFound(f"no document {source!r} in the knowledge base")
    return Response(status_code=204)


@router.post("/search")
async def search(request: SearchRequest, knowledge: KnowledgeBaseDep) -> list[Hit]:
    """What retrieval finds for a question, with scores: for tuning top_k, alpha and filters."""
    from tertulia.knowledge.store import find

    settings = knowledge.settings
    alpha = settings.alpha if request.alpha is None else request.alpha
    try:
        hits = await find(
            knowledge.store,
            knowledge.embedder,
            request.query,
            limit=request.top_k or settings.top_k,
            alpha=alpha,
            filters=request.filters,
        )
    except (StoreError, EmbeddingError) as error:
        raise _unavailable(error) from None
    return hits
