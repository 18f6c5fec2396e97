"""A knowledge base on two Weaviate nodes, each with a copy of every chunk: searches go on,
with the same results, while either node is away."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

from tests.integration.knowledge.conftest import KnowledgeBase, results, write_documents
from tests.testbed.servers import start_weaviate, weaviate_cluster


def test_a_two_node_knowledge_base_keeps_answering_with_either_node_gone(
    tmp_path: Path, embeddings_url: str
) -> None:
    nodes = weaviate_cluster(2)
    first, first_address = start_weaviate(tmp_path / "node0", cluster=nodes, node=0)
    second, second_address = start_weaviate(tmp_path / "node1", cluster=nodes, node=1)
    key_file = tmp_path / "weaviate-key"
    key_file.write_text(first_address.api_key)
    collection = f"R{uuid.uuid4().hex[:8]}"
    on_first = KnowledgeBase(first_address, key_file, embeddings_url, collection, 2)
    on_second = dataclasses.replace(on_first, address=second_address)
    try:
        ingested = on_first.cli("ingest", str(write_documents(tmp_path / "docs")))
        assert ingested.returncode == 0, ingested.stderr
        before = results(on_first)
        assert all(len(hits) == 3 for hits in before), before
        # Each node holds every chunk: the second answers as the first does.
        assert results(on_second) == before

        # The node that votes for the schema goes; the other still answers.
        first.stop()
        assert results(on_second) == before

        first, _ = start_weaviate(tmp_path / "node0", address=first_address, cluster=nodes, node=0)
        second.stop()
        assert results(on_first) == before
    finally:
        first.stop()
        second.stop()
