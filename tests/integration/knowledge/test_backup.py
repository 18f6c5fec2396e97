"""Knowledge that survives: a backup with Weaviate's own backup modules (to a folder, or to an
S3-compatible bucket), the data volume lost, and a restore that brings back the same search
results."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.knowledge.conftest import KnowledgeBase, results, write_documents
from tests.testbed.servers import start_s3, start_weaviate


@contextmanager
def backup_target(
    kind: str, workdir: Path
) -> Iterator[tuple[dict[str, Any], Callable[[], list[str]]]]:
    """What start_weaviate is given to back up to (a folder, or a bucket of an S3-compatible
    server), and what lists the files of the backups there."""
    if kind == "filesystem":
        folder = workdir / "backups"
        yield {"backups": folder}, lambda: [str(p.relative_to(folder)) for p in folder.rglob("*")]
        return
    server, bucket = start_s3(workdir / "s3")
    try:
        yield {"bucket": bucket}, lambda: bucket.keys("tertulia/")
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["filesystem", "s3"])
def test_a_backup_restores_the_same_search_results_after_the_volume_is_lost(
    tmp_path: Path, embeddings_url: str, kind: str
) -> None:
    with backup_target(kind, tmp_path) as (target, stored):
        restores_after_loss(tmp_path, embeddings_url, kind, target, stored)


def restores_after_loss(
    tmp_path: Path,
    embeddings_url: str,
    kind: str,
    target: dict[str, Any],
    stored: Callable[[], list[str]],
) -> None:
    weaviate, address = start_weaviate(tmp_path / "weaviate", **target)
    key_file = tmp_path / "weaviate-key"
    key_file.write_text(address.api_key)
    knowledge_base = KnowledgeBase(
        address, key_file, embeddings_url, f"B{uuid.uuid4().hex[:8]}", backup_backend=kind
    )
    try:
        ingested = knowledge_base.cli("ingest", str(write_documents(tmp_path / "docs")))
        assert ingested.returncode == 0, ingested.stderr
        before = results(knowledge_base)
        assert all(len(hits) == 3 for hits in before), before

        backed_up = knowledge_base.cli("backup", "--id", "nightly-1")
        assert backed_up.returncode == 0, backed_up.stderr
        assert "as nightly-1" in backed_up.stdout
        listed = knowledge_base.cli("backups")
        assert "nightly-1" in listed.stdout and "SUCCESS" in listed.stdout
        # Written where the backend keeps it: the folder, or the bucket under its path.
        assert any("nightly-1/" in name for name in stored()), stored()

        # The volume is lost: Weaviate starts again on an empty data folder.
        weaviate.stop()
        shutil.rmtree(tmp_path / "weaviate" / "data")
        weaviate, _ = start_weaviate(tmp_path / "weaviate", address=address, **target)
        schema = httpx.get(
            f"{address.url}/v1/schema/{knowledge_base.collection}",
            headers={"Authorization": f"Bearer {address.api_key}"},
            timeout=10,
        )
        assert schema.status_code == 404  # the collection went with the volume

        restored = knowledge_base.cli("restore", "nightly-1")
        assert restored.returncode == 0, restored.stderr
        assert results(knowledge_base) == before

        # Over a collection that exists, only when asked to replace it.
        refused = knowledge_base.cli("restore", "nightly-1")
        assert refused.returncode == 1
        assert "--replace" in refused.stderr
        replaced = knowledge_base.cli("restore", "nightly-1", "--replace")
        assert replaced.returncode == 0, replaced.stderr
        assert results(knowledge_base)[:2] == before[:2]
    finally:
        weaviate.stop()
