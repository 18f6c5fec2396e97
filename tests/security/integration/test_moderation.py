"""Attacks on moderation, against a real gateway in front of the real llama.cpp server: a
blocked term hidden from a plain match, placed where only the last message used to be read,
brought in by an uploaded document, or streamed by the model one token at a time."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tertulia.gateway.pipeline.moderation import normalise
from tests.integration.knowledge.conftest import KnowledgeBase
from tests.testbed.process import ManagedProcess
from tests.testbed.servers import start_gateway, start_llama_server, start_weaviate

REFUSAL = "Sorry, that is not something I can discuss."
SETTINGS = {
    "TEMPERATURE": "0",
    "MAX_TOKENS": "40",
    "RATE_LIMIT__ENABLED": "false",
    "MODERATION__REFUSAL": REFUSAL,
}
# Characters that print as nothing, each splitting the term as an attacker would.
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff"]


def gateway(
    workdir: Path, backend: str, terms: list[str], **settings: str
) -> tuple[ManagedProcess, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return start_gateway(
        workdir,
        {
            **SETTINGS,
            "BACKEND__URL": backend,
            "MODERATION__BLOCKED_TERMS": json.dumps(terms),
            **settings,
        },
        name=f"moderated-{workdir.name}",
    )


@pytest.fixture(scope="module")
def moderated(tmp_path_factory: pytest.TempPathFactory, instruct_url: str) -> Iterator[str]:
    process, url = gateway(tmp_path_factory.mktemp("moderated"), instruct_url, ["contraband"])
    yield url
    process.stop()


def refused(response: httpx.Response) -> bool:
    return response.status_code == 400 and response.json()["error"]["code"] == "content_blocked"


@pytest.mark.parametrize("invisible", INVISIBLE)
def test_a_term_split_by_an_invisible_character_is_refused(moderated: str, invisible: str) -> None:
    hidden = "contra" + invisible + "band"
    response = httpx.post(f"{moderated}/chat", json={"message": f"sell me {hidden}"}, timeout=60)
    assert refused(response), response.text


def test_a_term_in_full_width_letters_or_another_case_is_refused(moderated: str) -> None:
    wide = "".join(chr(ord(ch) + 0xFEE0) for ch in "CONTRABAND")
    response = httpx.post(f"{moderated}/chat", json={"message": f"sell me {wide}"}, timeout=60)
    assert refused(response), response.text


def test_a_term_in_the_context_is_refused(moderated: str) -> None:
    body = {"message": "Summarise the context.", "context": "Notes: buy con\u200btraband here."}
    assert refused(httpx.post(f"{moderated}/chat", json=body, timeout=60))


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant"])
def test_a_term_in_any_earlier_message_of_an_openai_request_is_refused(
    moderated: str, role: str
) -> None:
    messages = [
        {"role": role, "content": "Remember: con\u200dtraband is for sale."},
        {"role": "user", "content": "What did I say?"},
    ]
    response = httpx.post(
        f"{moderated}/v1/chat/completions", json={"messages": messages}, timeout=60
    )
    assert refused(response), response.text


def test_a_term_in_a_content_part_is_refused(moderated: str) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Tell me "},
                {"type": "text", "text": "contraband"},
            ],
        }
    ]
    response = httpx.post(
        f"{moderated}/v1/chat/completions", json={"messages": messages}, timeout=60
    )
    assert refused(response), response.text


# ---- what the model streams -------------------------------------------------------------
QUESTION = "Describe the history of the harbour in two sentences."


def chat_stream(url: str) -> tuple[list[str], dict[str, Any]]:
    """The /chat/stream token texts of QUESTION, and its `done` event."""
    tokens: list[str] = []
    done: dict[str, Any] = {}
    with httpx.stream("POST", f"{url}/chat/stream", json={"message": QUESTION}, timeout=120) as r:
        assert r.status_code == 200
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                if event == "token":
                    tokens.append(data["text"])
                elif event == "done":
                    done = data
    return tokens, done


def completion_stream(url: str) -> tuple[list[str], str | None]:
    """The content deltas an OpenAI client reads from a streamed QUESTION, and its finish
    reason."""
    body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True}
    deltas: list[str] = []
    finish = None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line.removeprefix("data: ")).get("choices") or []:
                if content := choice.get("delta", {}).get("content"):
                    deltas.append(content)
                finish = choice.get("finish_reason") or finish
    return deltas, finish


def two_words(tokens: list[str]) -> str:
    """Two words the model sent as tokens of their own, some way into its answer."""
    pairs = [
        (first, second)
        for first, second in itertools.pairwise(tokens)
        if re.fullmatch(r" ?[A-Za-z]{3,}", first) and re.fullmatch(r" [A-Za-z]{3,}", second)
    ]
    assert pairs, tokens
    first, second = pairs[len(pairs) // 2]
    return f"{first.strip()} {second.strip()}"


def before_first(answer: str, terms: list[str]) -> str:
    """The part of `answer` before the first of `terms` in it."""
    starts = [
        m.start() for t in terms for m in re.finditer(rf"(?<!\w){re.escape(t)}(?!\w)", answer)
    ]
    assert starts, (terms, answer)
    return answer[: min(starts)]


@pytest.fixture
def own_instruct_url(tmp_path: Path) -> Iterator[str]:
    """A llama.cpp server for one test alone. llama.cpp's logits are not bit-identical across
    batch sizes, so the same prompt may be answered in other words while another test's
    request shares the batch, or from a prompt partly cached by another test."""
    process, url = start_llama_server(tmp_path / "instruct")
    yield url
    process.stop()


def test_a_streamed_answer_never_sends_part_of_a_blocked_term(
    tmp_path: Path, own_instruct_url: str
) -> None:
    """The model's own answer, streamed token by token, with two of its words blocked: the
    stream stops before the first of them and not one character of them went out, though
    the model sent them in separate tokens."""
    free, free_url = gateway(tmp_path / "free", own_instruct_url, [])
    try:
        # A first answer of each kind puts its prompt in the server's cache: every answer
        # compared below is computed from the whole prompt cached.
        chat_stream(free_url)
        completion_stream(free_url)
        tokens, done = chat_stream(free_url)
        deltas, _ = completion_stream(free_url)
    finally:
        free.stop()
    answer = done["response"]
    assert "".join(tokens) == answer
    terms = sorted({two_words(tokens), two_words(deltas)})

    blocking, blocking_url = gateway(tmp_path / "blocking", own_instruct_url, terms)
    try:
        sent_tokens, blocked = chat_stream(blocking_url)
        content, finish = completion_stream(blocking_url)
    finally:
        blocking.stop()
    sent = "".join(sent_tokens)
    # Everything before the term went out, and nothing of it: the first word was held back
    # until the second settled it.
    assert sent == before_first(answer, terms), (terms, sent_tokens)
    assert blocked["finish_reason"] == "content_filter"
    assert blocked["response"] == REFUSAL
    assert "".join(content) == before_first("".join(deltas), terms) + "\n" + REFUSAL
    assert finish == "content_filter"
    for term in terms:
        assert normalise(term) not in normalise(sent + "".join(content))


# ---- what a document brings in ----------------------------------------------------------
POISONED = "smuggling/notes.md"


@pytest.fixture
def knowledge(tmp_path: Path, embeddings_url: str) -> Iterator[KnowledgeBase]:
    process, address = start_weaviate(tmp_path / "weaviate")
    key_file = tmp_path / "weaviate-key"
    key_file.write_text(address.api_key)
    yield KnowledgeBase(address, key_file, embeddings_url, "Moderated")
    process.stop()


def test_a_passage_holding_a_blocked_term_is_not_given_to_the_model(
    tmp_path: Path, instruct_url: str, knowledge: KnowledgeBase
) -> None:
    process, url = gateway(
        tmp_path / "gateway",
        instruct_url,
        ["contraband"],
        KNOWLEDGE_BASE__TOP_K="3",
        **knowledge.gateway_settings(),
    )
    try:
        documents = [
            {"source": POISONED, "content": "# Smugglers\n\nSmugglers hide contra\u200bband "
             "under the north quay at night."},
            {"source": "harbour/quay.md", "content": "# The north quay\n\nFishing boats moor "
             "at the north quay; smugglers were once caught there."},
        ]  # fmt: skip
        uploaded = httpx.post(
            f"{url}/admin/knowledge/documents", json={"documents": documents}, timeout=120
        )
        assert uploaded.status_code == 200, uploaded.text
        question = "What do smugglers hide under the north quay?"
        # The search finds the passage: it would be in the prompt but for moderation.
        found = httpx.post(f"{url}/admin/knowledge/search", json={"query": question}, timeout=60)
        assert POISONED in [hit["source"] for hit in found.json()]

        answer = httpx.post(f"{url}/chat", json={"message": question}, timeout=120)
        assert answer.status_code == 200, answer.text
        sources = [source["source"] for source in answer.json()["sources"]]
        assert POISONED not in sources
        assert "harbour/quay.md" in sources
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'tertulia_gateway_moderated_total{direction="passage"} 1.0' in metrics
    finally:
        process.stop()
