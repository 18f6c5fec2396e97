"""The gateway with a knowledge base: sources in answers, the admin API, and a Weaviate that
goes away mid-run (answers go on without context; /readyz says degraded)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.knowledge.conftest import DOCUMENTS, PDF_TEXT, KnowledgeBase
from tests.testbed.documents import minimal_pdf
from tests.testbed.process import ManagedProcess
from tests.testbed.servers import WeaviateAddress, start_gateway, start_weaviate


@dataclass
class Stack:
    url: str
    admin: dict[str, str]
    client: dict[str, str]
    weaviate: ManagedProcess
    knowledge_base: KnowledgeBase
    gateway: ManagedProcess


@pytest.fixture
def stack(tmp_path: Path, embeddings_url: str, llama_url: str, redis_url: str) -> Iterator[Stack]:
    """The gateway in front of llama.cpp, Redis and a Weaviate of its own, which the test
    may stop and start again."""
    weaviate, address = start_weaviate(tmp_path / "weaviate")
    key_file = tmp_path / "weaviate-key"
    key_file.write_text(address.api_key)
    knowledge_base = KnowledgeBase(address, key_file, embeddings_url, "Harbour")
    keys = tmp_path / "api-keys"
    keys.mkdir()
    admin_key, client_key = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    (keys / "admin").write_text(admin_key)
    (keys / "app").write_text(client_key)
    gateway, url = start_gateway(
        tmp_path,
        {
            "BACKEND__URL": llama_url,
            "REDIS_URL": redis_url,
            "API_KEYS_DIR": str(keys),
            "MAX_TOKENS": "40",
            "TEMPERATURE": "0",
            "RATE_LIMIT__ENABLED": "false",
            "KNOWLEDGE_BASE__TOP_K": "2",
            **knowledge_base.gateway_settings(),
        },
        name="kb-gateway",
    )
    stack = Stack(
        url,
        {"Authorization": f"Bearer {admin_key}"},
        {"Authorization": f"Bearer {client_key}"},
        weaviate,
        knowledge_base,
        gateway,
    )
    yield stack
    gateway.stop()
    # The Weaviate running now: a test may have stopped the first and started another.
    stack.weaviate.stop()


def _upload(stack: Stack) -> httpx.Response:
    documents = [{"source": name, "content": text} for name, text in DOCUMENTS.items()]
    documents.append(
        {
            "source": "manuals/cranes.pdf",
            "content": base64.b64encode(minimal_pdf(PDF_TEXT, "Crane manual")).decode(),
            "encoding": "base64",
        }
    )
    return httpx.post(
        f"{stack.url}/admin/knowledge/documents",
        json={"documents": documents},
        headers=stack.admin,
        timeout=120,
    )


def _chat(stack: Stack, message: str) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/chat", json={"message": message}, headers=stack.client, timeout=120
    )


def test_answers_carry_the_passages_found_as_sources(stack: Stack) -> None:
    uploaded = _upload(stack)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["documents"]["added"] == 4

    answer = _chat(stack, "What does a small boat pay for a night at the berth?")

    assert answer.status_code == 200, answer.text
    sources = answer.json()["sources"]
    assert sources[0]["source"] == "harbour/berths.md"
    assert sources[0]["section"] == "Fees"
    assert sources[0]["score"] > 0
    assert len(sources) == 2

    filtered = httpx.post(
        f"{stack.url}/chat",
        json={"message": "What does a small boat pay?", "filters": {"source": "town/*"}},
        headers=stack.client,
        timeout=120,
    )
    assert [source["source"] for source in filtered.json()["sources"]] == ["town/market.html"]

    # A question longer than the embedding model's 512 positions (all-MiniLM-L6-v2) is
    # embedded from its parts: searched by meaning as well as words, and the embeddings
    # server, which refuses the whole, keeps serving.
    story = (
        "My small boat has carried me along this coast for many summers, from one harbour "
        "to the next, and every evening I look for a quiet berth where she can rest. "
    )
    long_question = story * 20 + "What does a small boat pay for a night at the berth?"
    assert len(long_question.split()) > 600
    answer = _chat(stack, long_question)
    assert answer.status_code == 200, answer.text
    assert answer.json()["sources"][0]["source"] == "harbour/berths.md"
    assert "searching with BM25 alone" not in stack.gateway.log_tail(1000)
    assert httpx.get(stack.knowledge_base.embeddings_url.removesuffix("/v1") + "/health").is_success


def test_the_admin_api_lists_searches_and_deletes_and_is_for_admins_only(stack: Stack) -> None:
    assert _upload(stack).status_code == 200
    again = _upload(stack).json()
    assert again["documents"]["unchanged"] == 4 and again["chunks"]["written"] == 0

    refused = httpx.get(f"{stack.url}/admin/knowledge/documents", headers=stack.client)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"

    listed = httpx.get(f"{stack.url}/admin/knowledge/documents", headers=stack.admin).json()
    assert {item["source"] for item in listed} == {*DOCUMENTS, "manuals/cranes.pdf"}

    hits = httpx.post(
        f"{stack.url}/admin/knowledge/search",
        json={"query": "unload containers", "top_k": 1, "alpha": 0.0},
        headers=stack.admin,
        timeout=30,
    ).json()
    assert hits[0]["source"] == "manuals/cranes.pdf"

    deleted = httpx.delete(
        f"{stack.url}/admin/knowledge/documents",
        params={"source": "manuals/cranes.pdf"},
        headers=stack.admin,
    )
    assert deleted.status_code == 204
    missing = httpx.delete(
        f"{stack.url}/admin/knowledge/documents",
        params={"source": "manuals/cranes.pdf"},
        headers=stack.admin,
    )
    assert missing.status_code == 404

    bad = httpx.post(
        f"{stack.url}/admin/knowledge/documents",
        json={"documents": [{"source": "notes.docx", "content": "x"}]},
        headers=stack.admin,
    )
    assert bad.status_code == 422
    assert "suffix must be one of" in bad.json()["error"]["message"]


def test_a_stopped_weaviate_leaves_answers_without_context_and_readyz_degraded(
    stack: Stack, tmp_path: Path
) -> None:
    assert _upload(stack).status_code == 200
    assert httpx.get(f"{stack.url}/readyz").json()["status"] == "ready"

    stack.weaviate.stop()

    answer = _chat(stack, "What does a small boat pay for a night at the berth?")
    assert answer.status_code == 200, answer.text
    assert answer.json()["sources"] == []
    assert answer.json()["response"].strip()
    ready = httpx.get(f"{stack.url}/readyz", timeout=10)
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "degraded"
    assert body["checks"]["knowledge_base"]["status"] == "down"
    assert body["checks"]["backend"]["status"] == "up"
    assert stack.knowledge_base.address.api_key not in ready.text
    admin = httpx.get(f"{stack.url}/admin/knowledge/documents", headers=stack.admin)
    assert admin.status_code == 503 and "Retry-After" in admin.headers

    # Weaviate comes back on the same address with its data: context returns too.
    address: WeaviateAddress = stack.knowledge_base.address
    stack.weaviate, _ = start_weaviate(tmp_path / "weaviate", address=address)
    assert httpx.get(f"{stack.url}/readyz", timeout=10).json()["status"] == "ready"
    again = _chat(stack, "What does a small boat pay for a night at the berth?")
    assert again.json()["sources"][0]["source"] == "harbour/berths.md"
