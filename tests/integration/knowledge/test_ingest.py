"""`tertulia kb ingest` against a real Weaviate and real embeddings (all-MiniLM-L6-v2)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.knowledge.conftest import KnowledgeBase, write_documents


def _counts(output: str) -> dict[str, int]:
    """The summary table's rows, e.g. {'documents added': 4, 'chunks written': 5}."""
    counts = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if len(cells) == 2 and cells[1].isdigit():
            counts[cells[0]] = int(cells[1])
    return counts


def test_ingest_reports_a_bad_file_and_stores_the_rest_with_metadata(
    knowledge_base: KnowledgeBase, tmp_path: Path
) -> None:
    folder = write_documents(tmp_path / "docs")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (folder / "picture.png").write_bytes(b"\x89PNG")  # not a document: not even tried

    result = knowledge_base.cli("ingest", str(folder))

    assert result.returncode == 1, result.stderr
    counts = _counts(result.stderr)
    assert counts["documents added"] == 4
    assert counts["documents failed"] == 1
    assert "broken.pdf" in result.stderr and "not a readable PDF" in result.stderr
    stored = knowledge_base.objects().values()
    sources = {item["properties"]["source"] for item in stored}
    assert sources == {
        "harbour/berths.md",
        "harbour/tides.txt",
        "town/market.html",
        "manuals/cranes.pdf",
    }
    fees = next(item for item in stored if "ten crowns" in item["properties"]["text"])
    assert fees["properties"]["title"] == "Berths"
    assert fees["properties"]["section"] == "Fees"
    assert len(fees["properties"]["content_hash"]) == 64
    assert counts["chunks written"] == len(stored)
    pdf = next(item for item in stored if item["properties"]["source"] == "manuals/cranes.pdf")
    assert pdf["properties"]["title"] == "Crane manual"
    assert "Cranes unload containers" in pdf["properties"]["text"]


def test_reingesting_unchanged_documents_writes_nothing(
    knowledge_base: KnowledgeBase, tmp_path: Path
) -> None:
    folder = write_documents(tmp_path / "docs")
    assert knowledge_base.cli("ingest", str(folder)).returncode == 0
    before = knowledge_base.objects()

    again = knowledge_base.cli("ingest", str(folder))

    assert again.returncode == 0, again.stderr
    counts = _counts(again.stderr)
    assert counts["documents unchanged"] == 4
    assert counts["chunks written"] == 0 and counts["chunks deleted"] == 0
    after = knowledge_base.objects()
    assert {key: item["lastUpdateTimeUnix"] for key, item in after.items()} == {
        key: item["lastUpdateTimeUnix"] for key, item in before.items()
    }


def test_a_changed_document_is_replaced_and_the_others_are_untouched(
    knowledge_base: KnowledgeBase, tmp_path: Path
) -> None:
    folder = write_documents(tmp_path / "docs")
    assert knowledge_base.cli("ingest", str(folder)).returncode == 0
    before = knowledge_base.objects()
    berths = folder / "harbour" / "berths.md"
    berths.write_text(berths.read_text().replace("ten crowns", "twelve silver crowns"))

    result = knowledge_base.cli("ingest", str(folder))

    assert result.returncode == 0, result.stderr
    counts = _counts(result.stderr)
    assert counts["documents changed"] == 1 and counts["documents unchanged"] == 3
    after = knowledge_base.objects()
    texts = [item["properties"]["text"] for item in after.values()]
    assert any("twelve silver crowns" in text for text in texts)
    assert not any("ten crowns" in text for text in texts)
    for key, item in before.items():
        if item["properties"]["source"] != "harbour/berths.md":
            assert after[key]["lastUpdateTimeUnix"] == item["lastUpdateTimeUnix"]
    # The chunk before the edited section kept its vector: it was not written again.
    assert counts["chunks written"] == 1
    assert counts["chunks deleted"] == 1


def test_prune_removes_documents_that_are_gone(
    knowledge_base: KnowledgeBase, tmp_path: Path
) -> None:
    folder = write_documents(tmp_path / "docs")
    assert knowledge_base.cli("ingest", str(folder)).returncode == 0
    (folder / "town" / "market.html").unlink()

    kept = knowledge_base.cli("ingest", str(folder))
    assert "town/market.html" in {
        item["properties"]["source"] for item in knowledge_base.objects().values()
    }, "without --prune nothing is deleted"

    pruned = knowledge_base.cli("ingest", "--prune", str(folder))

    assert kept.returncode == 0 and pruned.returncode == 0, pruned.stderr
    assert _counts(pruned.stderr)["documents removed"] == 1
    sources = {item["properties"]["source"] for item in knowledge_base.objects().values()}
    assert sources == {"harbour/berths.md", "harbour/tides.txt", "manuals/cranes.pdf"}
    listed = knowledge_base.cli("list")
    assert "town/market.html" not in listed.stdout and "harbour/tides.txt" in listed.stdout

    # A path that is missing (a volume not mounted) must not read as "its documents are gone".
    (folder / "manuals" / "cranes.pdf").unlink()
    missing = knowledge_base.cli("ingest", "--prune", str(folder), str(tmp_path / "gone"))
    assert missing.returncode == 1
    assert "nothing pruned" in missing.stderr
    sources = {item["properties"]["source"] for item in knowledge_base.objects().values()}
    assert "manuals/cranes.pdf" in sources


def test_hybrid_search_finds_the_passage_that_answers(
    knowledge_base: KnowledgeBase, tmp_path: Path
) -> None:
    folder = write_documents(tmp_path / "docs")
    assert knowledge_base.cli("ingest", str(folder)).returncode == 0

    result = knowledge_base.cli("search", "When can I buy fresh fish?", "--top-k", "2")

    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("[1] town/market.html"), result.stdout
    assert "opens at dawn on Saturdays" in result.stdout
    only_harbour = knowledge_base.cli(
        "search", "When can I buy fresh fish?", "--source", "harbour/*"
    )
    assert "town/market.html" not in only_harbour.stdout
    assert "harbour/" in only_harbour.stdout


def test_a_weaviate_that_cannot_be_reached_is_a_clear_error(
    knowledge_base: KnowledgeBase, tmp_path: Path
) -> None:
    folder = write_documents(tmp_path / "docs")
    result = knowledge_base.cli("ingest", "--weaviate-url", "http://127.0.0.1:9", str(folder))
    assert result.returncode == 2
    assert "Weaviate at http://127.0.0.1:9" in result.stderr
    assert knowledge_base.address.api_key not in result.stderr + result.stdout
