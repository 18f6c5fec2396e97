"""The README's quickstart, as a user runs it: `make run`, a question typed into the chat,
its answer with sources, and everything stopped when the chat ends."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

from tests.testbed.process import free_port

REPO = Path(__file__).resolve().parents[2]
# A fact of the ingested docs, asked three ways, each in a conversation of its own: at the
# example's temperature 0 the answers are the same on every run over the same docs.
# The model's name as the docs give it (SmolLM2-135M-Instruct); a 135M model copies it with
# the odd slip ("smollLM2"), which is still the fact from the passages.
FACT = re.compile(r"smol+m2|135m")
FACT_QUESTIONS = [
    "Which model does local mode serve?",
    "What model answers in tertulia up?",
    "Which model does make run start?",
]


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
    session += "".join(f"{question}\n/reset\n" for question in FACT_QUESTIONS) + "/quit\n"

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
    # (how many sources the answer had) or the next prompt.
    answers = [
        re.split(r"^\d+ sources: /sources to list them$", turn, flags=re.MULTILINE)[0]
        for turn in (part.split("you> ", 1)[0] for part in result.stdout.split("bot> ")[1:])
    ]
    assert len(answers) == 1 + len(FACT_QUESTIONS), result.stdout
    for answer in answers:
        assert len(answer.split()) >= 3, f"the model said {answer!r}"
        assert "/sources to list them" not in answer
    # Questions about a fact in the docs get it from the passages.
    held = [bool(FACT.search(answer.lower())) for answer in answers[1:]]
    print(f"the fact was in {sum(held)} of {len(held)} answers: {answers[1:]}")
    assert sum(held) >= 2, answers[1:]
    # /sources lists the documentation passages the answer was given.
    listed = re.findall(r"\[\d\] (\S+\.md) — ", result.stdout)
    assert listed and set(listed) <= {path.name for path in (REPO / "docs").glob("*.md")} | {
        "README.md"
    }, result.stdout
    assert "a new conversation" in result.stdout
    assert "stopped" in result.stderr
    for port in (gateway_port, model_port, model_port + 1, model_port + 2):
        assert not _listening(port), f"port {port} still served after the chat ended"
