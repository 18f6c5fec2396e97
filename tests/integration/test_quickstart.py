"""The README's quickstart, as a user runs it: `make run`, a question typed into the chat,
its answer with sources, and everything stopped when the chat ends."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

from tertulia.knowledge.documents import parse
from tests.testbed.process import free_port

REPO = Path(__file__).resolve().parents[2]
# A fact of the ingested docs, asked three ways, each in a conversation of its own. The docs
# change with the project, and what a 135M model makes of their passages with them, so the
# answers are checked for words and the passages for the fact: retrieval must find it for
# some phrasing (the model copying a fact from a fixed corpus, and retrieval finding it for
# most phrasings, are tests/integration/knowledge/test_answers.py's).
FACT = re.compile(r"smollm2|135m")
FACT_QUESTIONS = [
    "Which model does local mode serve?",
    "What model answers in tertulia up?",
    "Which model does make run start?",
]
# A line of /sources: number, file, the passage's title and section, its score.
SOURCE_LINE = re.compile(r"^\[\d+\] (\S+) — (.+) \(\d+\.\d+\)$", re.MULTILINE)


def _passage_text(source: str, label: str) -> str:
    """The text of the docs' section that a /sources line names (title > section)."""
    path = REPO / source if source == "README.md" else REPO / "docs" / source
    document = parse(source, path.read_bytes(), "markdown")
    return "\n".join(
        "\n".join(section.blocks)
        for section in document.sections
        if label == (f"{document.title} > {section.heading}" if section.heading else document.title)
    )


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_make_run_answers_in_the_terminal_with_sources_and_stops_cleanly(tmp_path: Path) -> None:
    assert "make run" in (REPO / "README.md").read_text()
    gateway_port = free_port()
    model_port = free_port()
    while any(_listening(model_port + offset) for offset in range(4)):
        model_port = free_port()
    env = {
        **os.environ,
        "TERTULIA_GATEWAY_PORT": str(gateway_port),
        "TERTULIA_MODEL_PORT": str(model_port),
        "TERTULIA_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "200",
    }
    session = "How do I scale the model server with kubectl?\n/sources\n/reset\n"
    session += "".join(f"{question}\n/sources\n/reset\n" for question in FACT_QUESTIONS)
    session += "/quit\n"

    result = subprocess.run(
        ["make", "--no-print-directory", "run"],
        cwd=REPO,
        input=session,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"web chat: http://127.0.0.1:{gateway_port}/" in output
    assert "bot> " in result.stdout, result.stdout
    # The model's own words: what follows `bot> ` up to the line the chat adds after them
    # (how many sources the answer had) or the next prompt; then what /sources listed.
    turns = [part.split("you> ") for part in result.stdout.split("bot> ")[1:]]
    answers = [
        re.split(r"^\d+ sources: /sources to list them$", turn[0], flags=re.MULTILINE)[0]
        for turn in turns
    ]
    assert len(answers) == 1 + len(FACT_QUESTIONS), result.stdout
    for answer in answers:
        assert len(answer.split()) >= 3, f"the model said {answer!r}"
        assert "/sources to list them" not in answer
    # /sources lists the documentation passages each answer was given, and for a question
    # about a fact of the docs, a passage that holds it.
    docs = {path.name for path in (REPO / "docs").glob("*.md")} | {"README.md"}
    for turn in turns:
        listed = SOURCE_LINE.findall(turn[1]) if len(turn) > 1 else []
        assert listed, turn
        assert {source for source, _ in listed} <= docs, listed
    found = {}
    for question, turn in zip(FACT_QUESTIONS, turns[1:], strict=True):
        passages = [_passage_text(source, label) for source, label in SOURCE_LINE.findall(turn[1])]
        assert all(passages), (question, turn[1])  # each names a section of the docs
        found[question] = any(FACT.search(text.lower()) for text in passages)
    # Some phrasing finds the passage that holds the fact. (Which phrasings do moves with
    # every edit of the docs: one asking what "make run starts" found the table of what runs,
    # which points below for the model.)
    print(f"passages holding the fact: {found}")
    assert any(found.values()), found
    assert "a new conversation" in result.stdout
    assert "stopped" in result.stderr
    for port in (gateway_port, model_port, model_port + 1, model_port + 2):
        assert not _listening(port), f"port {port} still served after the chat ended"
