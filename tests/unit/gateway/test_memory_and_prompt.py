"""Memory keeps the newest turns that fit the budget; the prompt keeps the system prompt first."""

from __future__ import annotations

from tertulia.gateway.pipeline.auth import Identity
from tertulia.gateway.pipeline.memory import conversation_key, fit_history
from tertulia.gateway.pipeline.prompt import assemble, estimate_tokens
from tertulia.gateway.pipeline.retrieval import Passage
from tertulia.gateway.store import Turn


def turns(*contents: str) -> list[Turn]:
    return [
        Turn(role="user" if index % 2 == 0 else "assistant", content=text)
        for index, text in enumerate(contents)
    ]


def test_history_within_budget_is_kept_whole() -> None:
    history = turns("hi", "hello", "how are you", "fine")
    assert fit_history(history, budget_tokens=1000) == history


def test_oldest_turns_are_dropped_first_when_over_budget() -> None:
    history = turns("a" * 400, "b" * 400, "c" * 40, "d" * 40)
    kept = fit_history(history, budget_tokens=2 * estimate_tokens("c" * 40))
    assert [turn.content[0] for turn in kept] == ["c", "d"]


def test_a_reply_is_not_kept_without_the_message_it_answered() -> None:
    history = turns("a" * 400, "b" * 40, "c" * 40, "d" * 40)
    kept = fit_history(history, budget_tokens=3 * estimate_tokens("b" * 40))
    assert kept[0].role == "user"
    assert [turn.content[0] for turn in kept] == ["c", "d"]


def test_zero_budget_keeps_no_history() -> None:
    assert fit_history(turns("hi", "hello"), budget_tokens=0) == []


def test_conversation_keys_differ_by_key_identity_user_and_conversation() -> None:
    base = conversation_key(Identity("bots"), "U1", "slack:C1:T1")
    assert base != conversation_key(Identity("bots"), "U2", "slack:C1:T1")
    assert base != conversation_key(Identity("web"), "U1", "slack:C1:T1")
    assert base != conversation_key(Identity("bots"), "U1", "slack:C1:T2")
    assert base == conversation_key(Identity("bots"), "U1", "slack:C1:T1")
    assert "U1" not in base


def test_prompt_is_system_then_history_then_message() -> None:
    messages = assemble("Be brief.", turns("earlier", "answer"), "now?")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "Be brief."
    assert messages[-1]["content"] == "now?"


def test_passages_lead_the_question_and_context_is_delimited_in_the_system_message() -> None:
    passages = [
        Passage(text="Ports open at nine.\n", source="docs/harbour.md", score=0.9),
        Passage(text="Tugs wait at the mole.", source="docs/tugs.md", score=0.5),
    ]
    messages = assemble("Be brief.", [], "When?", passages=passages, context="channel: #port")

    system = messages[0]["content"]
    assert system.startswith("Be brief.")
    assert "<context>\nchannel: #port\n</context>" in system
    assert "Ports open" not in system
    assert messages[1] == {
        "role": "user",
        "content": "Passages:\n[1] Ports open at nine.\n[2] Tugs wait at the mole.\n\n"
        "Answer from the passages where they help, citing them as [1], [2].\n"
        "Question: When?",
    }
    assert len(messages) == 2
    assert assemble("Be brief.", [], "When?")[1]["content"] == "When?"
