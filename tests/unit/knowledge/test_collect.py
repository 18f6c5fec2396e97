"""What ingestion reads from a source folder: never outside it, and a bounded amount."""

from __future__ import annotations

from pathlib import Path

import pytest

from tertulia.knowledge import ingest
from tertulia.knowledge.ingest import Report, collect


def configmap_like(root: Path, files: dict[str, str]) -> None:
    """A folder as the kubelet mounts a ConfigMap: each file a link into `..data`."""
    version = root / "..2026_12_01_00_00_00.000000001"
    version.mkdir(parents=True)
    for name, text in files.items():
        (version / name).write_text(text)
    (root / "..data").symlink_to(version.name)
    for name in files:
        (root / name).symlink_to(f"..data/{name}")


def test_a_mounted_configmaps_links_are_read(tmp_path: Path) -> None:
    root = tmp_path / "source"
    configmap_like(root, {"faq.md": "# FAQ\n\nOne.\n", "guide.txt": "Two."})
    report = Report()
    found = {item.source: item.data for item in collect([root], report)}
    assert found == {"faq.md": b"# FAQ\n\nOne.\n", "guide.txt": b"Two."}
    assert report.failures == {}


def test_a_link_out_of_the_source_folder_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret" / "token.txt"
    secret.parent.mkdir()
    secret.write_text("xoxb-never-ingested")
    root = tmp_path / "source"
    root.mkdir()
    (root / "doc.md").write_text("# Doc\n\nKept.\n")
    (root / "leak.txt").symlink_to(secret)
    (root / "elsewhere").symlink_to(secret.parent)
    report = Report()
    found = collect([root], report)
    assert [item.source for item in found] == ["doc.md"]
    assert not any(b"xoxb" in item.data for item in found)
    assert set(report.failures) == {"leak.txt", "elsewhere"}
    assert all("out of the source folder" in reason for reason in report.failures.values())


def test_a_link_loop_is_walked_once(tmp_path: Path) -> None:
    root = tmp_path / "source"
    (root / "a").mkdir(parents=True)
    (root / "a" / "doc.md").write_text("# Doc\n")
    (root / "a" / "again").symlink_to("..")
    report = Report()
    found = collect([root], report)
    assert [item.source for item in found] == ["a/doc.md"]


@pytest.mark.parametrize(
    ("max_files", "max_bytes", "kept", "reason"),
    [
        (3, 1000, ["doc0.txt", "doc1.txt", "doc2.txt"], "over 3 documents"),
        (100, 25, ["doc0.txt", "doc1.txt"], "of documents in one run"),
    ],
)
def test_reading_stops_at_the_bounds_and_says_what_was_left(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    max_files: int,
    max_bytes: int,
    kept: list[str],
    reason: str,
) -> None:
    monkeypatch.setattr(ingest, "MAX_FILES", max_files)
    monkeypatch.setattr(ingest, "MAX_TOTAL_BYTES", max_bytes)
    root = tmp_path / "source"
    root.mkdir()
    for index in range(5):
        (root / f"doc{index}.txt").write_text("x" * 10)
    report = Report()
    found = collect([root], report)
    assert [item.source for item in found] == kept
    assert report.documents["failed"] == 5 - len(kept)
    assert all(reason in why for why in report.failures.values())
