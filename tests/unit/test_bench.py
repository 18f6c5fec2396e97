"""The benchmarks' own data and reporting, checked without running them: the RAG set answers
from its frozen corpus, whatever the docs say now; the summary table and JSON hold every
figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench import _report, rag

from tertulia.knowledge.settings import KnowledgeSettings


def test_every_question_s_passage_is_in_the_frozen_corpus() -> None:
    inputs = rag.corpus()
    assert {item.source for item in inputs} >= {"README.md", "docs/knowledge.md"}
    asked = rag.questions(inputs, KnowledgeSettings())
    assert len(asked) == 125


def test_the_corpus_is_the_frozen_copy_not_the_live_docs() -> None:
    repo = Path(rag.__file__).resolve().parents[1]
    frozen = {item.source: item.data for item in rag.corpus()}
    # The live README has moved on since the questions were written; the corpus has not.
    assert frozen["README.md"] != (repo / "README.md").read_bytes()
    assert frozen["README.md"] == (rag.CORPUS / "README.md").read_bytes()


def test_a_passage_missing_from_the_corpus_stops_the_benchmark() -> None:
    inputs = [item for item in rag.corpus() if item.source != "docs/bots.md"]
    with pytest.raises(SystemExit, match=r"docs/bots\.md"):
        rag.questions(inputs, KnowledgeSettings())


def test_the_summary_lists_every_figure_and_writes_it_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_report, "RESULTS", tmp_path)
    figures = [
        _report.Figure(
            "operator", "200 ChatBots to Ready, against the floor", 1.19, "x", "<= 1.5", True
        ),
        _report.Figure("rag", "recall@5, bm25", 0.82, ""),
        _report.Figure("faults", "missing workloads after kills", 1, "", "0", False),
    ]
    table = _report.table(figures)
    assert "1.19 x" in table and "met" in table and "MISSED" in table
    assert "recall@5, bm25" in table

    written = json.loads(_report.write(figures, failed=["gateway"]).read_text())

    assert written["failed"] == ["gateway"]
    assert [f["name"] for f in written["figures"]] == [f.name for f in figures]
    assert written["figures"][0] == {
        "bench": "operator",
        "name": "200 ChatBots to Ready, against the floor",
        "value": 1.19,
        "unit": "x",
        "target": "<= 1.5",
        "met": True,
    }
