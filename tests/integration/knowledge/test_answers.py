"""The whole path of a question about the documents, with local mode's model: retrieval from
Weaviate, the passages in the prompt, SmolLM2-135M-Instruct on llama.cpp, and the fact in
the answer. Several phrasings of each question; at temperature 0 each answer is the same on
every run, so the count is a figure, not a chance.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.knowledge.conftest import start_harbour_gateway
from tests.testbed.servers import WeaviateAddress

# A fact a small model can copy from its passage, and ways a person might ask for it.
QUESTIONS = {
    "ten crowns": [
        "What does a small boat pay for a night at the berth?",
        "How much is a night's berth for a small boat?",
        "What is the fee for a small boat per night?",
        "How much does a small boat pay?",
    ],
    "north quay": [
        "Where do ships moor?",
        "At which quay do ships moor?",
        "Where do ships moor in the morning?",
    ],
    "dawn": [
        "When does the fish market open?",
        "What time does the fish market open on Saturdays?",
        "When can I buy fish at the market?",
    ],
    "monday": [
        "When is the tide table posted?",
        "On which day does the keeper post the tide table?",
        "When does the lighthouse keeper post the tide table?",
    ],
}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    weaviate: WeaviateAddress,
    embeddings_url: str,
    instruct_url: str,
) -> Iterator[str]:
    process, url = start_harbour_gateway(
        tmp_path_factory.mktemp("answers"),
        weaviate,
        embeddings_url,
        "Answers",
        {
            "BACKEND__URL": instruct_url,
            "MAX_TOKENS": "48",
            "TEMPERATURE": "0",
            "KNOWLEDGE_BASE__TOP_K": "2",
        },
        name="answers-gateway",
    )
    yield url
    process.stop()


def test_questions_about_the_documents_get_the_fact_from_the_passage(gateway: str) -> None:
    answers: dict[str, list[tuple[str, str]]] = {}
    for fact, phrasings in QUESTIONS.items():
        for question in phrasings:
            body = {"message": question, "conversation_id": uuid.uuid4().hex}
            reply = httpx.post(f"{gateway}/chat", json=body, timeout=120).json()["response"]
            answers.setdefault(fact, []).append((question, reply))

    held = {
        fact: sum(fact in reply.lower() for _, reply in replies)
        for fact, replies in answers.items()
    }
    report = "\n".join(
        f"{'+' if fact in reply.lower() else '-'} {question} -> {reply!r}"
        for fact, replies in answers.items()
        for question, reply in replies
    )
    total = sum(len(phrasings) for phrasings in QUESTIONS.values())
    print(f"the fact was in {sum(held.values())} of {total} answers\n{report}")
    # Every fact is found by some phrasing, and most phrasings find theirs.
    assert all(held.values()), report
    assert sum(held.values()) >= 0.6 * total, report
