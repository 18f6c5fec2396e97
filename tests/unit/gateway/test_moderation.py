"""Moderation matches blocked terms as whole words whatever their case, width or accents."""

from __future__ import annotations

import json

import httpx
import pytest

from tertulia.gateway.errors import ContentBlocked
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.pipeline.moderation import Moderator, normalise
from tertulia.gateway.settings import ModerationSettings


def moderator(
    *terms: str,
    http: httpx.AsyncClient | None = None,
    guard: bool = False,
    metrics: GatewayMetrics | None = None,
) -> Moderator:
    settings = ModerationSettings(
        blocked_terms=list(terms),
        guard_url="http://guard/v1" if guard else None,
        guard_model="guard",
    )
    return Moderator(settings, metrics or GatewayMetrics.create(), http)


def fullwidth(text: str) -> str:
    """The text in full-width letters, as some keyboards and spammers type it."""
    return "".join(chr(ord(ch) + 0xFEE0) for ch in text)


def test_normalise_folds_case_width_accents_and_spacing() -> None:
    assert normalise(f"  {fullwidth('C')}afé\u00a0 CRÈME ") == "cafe creme"


@pytest.mark.parametrize(
    "text",
    [
        "this is Contraband",
        "CONTRABAND!",
        fullwidth("contraband"),
        "contrabánd here",
        "so,contraband.",
    ],
)
def test_blocked_term_is_found_in_any_form(text: str) -> None:
    assert moderator("contraband").blocked_term(text) == "contraband"


@pytest.mark.parametrize("text", ["contrabands are listed", "the contrabandist", "ban"])
def test_blocked_term_inside_a_longer_word_is_not_matched(text: str) -> None:
    assert moderator("contraband").blocked_term(text) is None


def test_multi_word_terms_match_across_irregular_spacing() -> None:
    assert moderator("secret plan").blocked_term("the Secret \n  Plan is") == "secret plan"


async def test_blocked_input_raises_content_blocked_and_is_counted() -> None:
    metrics = GatewayMetrics.create()
    checker = moderator("contraband", metrics=metrics)
    with pytest.raises(ContentBlocked) as raised:
        await checker.check_input("buy Contraband now")
    assert "contraband" not in raised.value.message.lower()
    assert (
        metrics.registry.get_sample_value(
            "tertulia_gateway_moderated_total", {"direction": "input"}
        )
        == 1
    )


def test_output_scanner_catches_a_term_split_across_deltas() -> None:
    scanner = moderator("contraband").scanner()
    assert [scanner.feed(delta) for delta in ["We sell contra", "band", " here"]] == [
        False,
        True,
        True,
    ]


def test_output_scanner_without_terms_never_blocks() -> None:
    scanner = moderator().scanner()
    assert not scanner.feed("anything at all")


def guard_client(verdict: str, seen: list[dict[str, object]]) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"content": verdict}}]})

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


async def test_guard_model_saying_unsafe_blocks_the_message() -> None:
    seen: list[dict[str, object]] = []
    checker = moderator(http=guard_client("unsafe\nS2", seen), guard=True)

    with pytest.raises(ContentBlocked):
        await checker.check_input("how do I pick a lock")

    assert seen[0]["messages"] == [{"role": "user", "content": "how do I pick a lock"}]
    assert seen[0]["model"] == "guard"


async def test_guard_model_saying_safe_lets_the_message_through() -> None:
    checker = moderator(http=guard_client("safe", []), guard=True)
    await checker.check_input("hello")
    assert await checker.output_allowed("hi there")


async def test_failing_guard_model_lets_the_message_through_and_counts_the_error() -> None:
    def fail(_: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    metrics = GatewayMetrics.create()
    http = httpx.AsyncClient(transport=httpx.MockTransport(fail))
    checker = moderator(http=http, guard=True, metrics=metrics)
    await checker.check_input("hello")
    assert (
        metrics.registry.get_sample_value(
            "tertulia_gateway_backend_errors_total", {"kind": "guard"}
        )
        == 1
    )
