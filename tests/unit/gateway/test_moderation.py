"""Moderation matches blocked terms as whole words whatever their case, width or accents."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from tertulia.gateway.backend import Backend
from tertulia.gateway.errors import ContentBlocked
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.pipeline.moderation import Moderator, fold, normalise
from tertulia.gateway.settings import BackendSettings, ModerationSettings
from tests.fakes.openai_backend import FakeBackend


def moderator(
    *terms: str, guard_url: str | None = None, metrics: GatewayMetrics | None = None
) -> Moderator:
    metrics = metrics or GatewayMetrics.create()
    settings = ModerationSettings(
        blocked_terms=list(terms), guard_url=guard_url, guard_model="guard"
    )
    guard = (
        Backend(BackendSettings(url=guard_url, model="guard", retries=0), metrics)
        if guard_url
        else None
    )
    return Moderator(settings, metrics, guard)


def fullwidth(text: str) -> str:
    """The text in full-width letters, as some keyboards and spammers type it."""
    return "".join(chr(ord(ch) + 0xFEE0) for ch in text)


def test_normalise_folds_case_width_accents_and_spacing() -> None:
    assert normalise(f"  {fullwidth('C')}afé\u00a0 CRÈME ") == "cafe creme"


@given(text=st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_text_normalises_as_any_text_does(text: str) -> None:
    assert normalise(text) == fold(text)


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


async def test_guard_model_saying_unsafe_blocks_the_message(
    fake: FakeBackend, fake_url: str
) -> None:
    fake.config.reply = "unsafe\nS2"
    checker = moderator(guard_url=fake_url)

    with pytest.raises(ContentBlocked):
        await checker.check_input("how do I pick a lock")

    assert fake.requests[0]["messages"] == [{"role": "user", "content": "how do I pick a lock"}]
    assert fake.requests[0]["model"] == "guard"


async def test_guard_model_saying_safe_lets_the_message_through(
    fake: FakeBackend, fake_url: str
) -> None:
    fake.config.reply = "safe"
    checker = moderator(guard_url=fake_url)

    await checker.check_input("hello")
    assert await checker.output_allowed("hi there")


async def test_failing_guard_model_lets_the_message_through_and_counts_the_error(
    fake: FakeBackend, fake_url: str
) -> None:
    fake.config.fail_status = 500
    metrics = GatewayMetrics.create()
    checker = moderator(guard_url=fake_url, metrics=metrics)

    await checker.check_input("hello")

    assert (
        metrics.registry.get_sample_value(
            "tertulia_gateway_backend_errors_total", {"kind": "guard"}
        )
        == 1
    )


_WORDS = [
    "ok",
    "Pass",
    "WORD",
    "café",
    fullwidth("full"),
    "secret",
    "se",
    "cret",
    " ",
    "  ",
    "\n",
    "-",
    "!",
]


@examples(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(pieces=st.lists(st.sampled_from(_WORDS), max_size=40), cuts=st.randoms())
def test_streaming_scan_finds_exactly_what_a_scan_of_the_whole_text_finds(
    pieces: list[str], cuts: Any
) -> None:
    scanning = moderator("secret", "pass word", "cafe")
    text = "".join(pieces)
    # The same text cut into deltas anywhere, words and spaces split across them.
    points = sorted(cuts.sample(range(len(text) + 1), min(len(text), 8)))
    deltas = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    scanner = scanning.scanner()
    seen = ""
    for delta in deltas:
        seen += delta
        # True at the first delta that completes a term, as the whole text says; the
        # stream stops there.
        found = scanner.feed(delta)
        assert found == (scanning.blocked_term(seen) is not None), (deltas, seen)
        if found:
            break


def test_streaming_scan_normalises_each_delta_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from tertulia.gateway.pipeline import moderation

    normalised: list[int] = []

    def counting(text: str) -> str:
        normalised.append(len(text))
        return normalise(text)

    scanner = moderator("forbidden").scanner()
    monkeypatch.setattr(moderation, "normalise", counting)
    answer = ["word "] * 5000
    assert not any(scanner.feed(delta) for delta in answer)
    # Linear: each character once, not the whole answer again on every token.
    assert sum(normalised) == len("".join(answer))
