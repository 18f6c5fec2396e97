"""A Weaviate the operator does not run (Weaviate Cloud, or one elsewhere): reached at the
addresses the settings give, gRPC on a host of its own as Weaviate Cloud's is, with its key."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

from tests.integration.knowledge.conftest import KnowledgeBase, results, write_documents
from tests.testbed.servers import WeaviateAddress, start_weaviate


def test_an_external_weaviate_is_reached_at_its_own_grpc_address_with_its_key(
    tmp_path: Path, embeddings_url: str
) -> None:
    weaviate, address = start_weaviate(tmp_path / "weaviate", api_key="k-" + uuid.uuid4().hex)
    key_file = tmp_path / "weaviate-key"
    key_file.write_text(address.api_key + "\n")
    # The HTTP host's own gRPC port is wrong: only grpc_url leads to the gRPC server.
    elsewhere = WeaviateAddress(address.url, 1, address.api_key)
    knowledge_base = KnowledgeBase(
        elsewhere,
        key_file,
        embeddings_url,
        f"E{uuid.uuid4().hex[:8]}",
        grpc_url=f"http://localhost:{address.grpc_port}",
    )
    try:
        ingested = knowledge_base.cli("ingest", str(write_documents(tmp_path / "docs")))
        assert ingested.returncode == 0, ingested.stderr
        found = results(knowledge_base)
        assert all(len(hits) == 3 for hits in found), found

        # Without it, the gRPC port the HTTP host has is tried, and fails.
        refused = dataclasses.replace(knowledge_base, grpc_url=None).cli("search", "tide")
        assert refused.returncode != 0

        # A wrong key is refused with a reason that does not repeat it.
        wrong = tmp_path / "wrong-key"
        wrong.write_text("not-the-key-" + uuid.uuid4().hex)
        denied = dataclasses.replace(knowledge_base, key_file=wrong).cli("search", "tide")
        assert denied.returncode != 0
        assert wrong.read_text() not in denied.stdout + denied.stderr
        assert address.api_key not in denied.stdout + denied.stderr
    finally:
        weaviate.stop()
