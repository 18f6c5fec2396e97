"""Moderation matches blocked terms as whole words whatever their case, width or accents."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from tertulia.gateway.backend import Backend
from tertulia.gateway.errors import ContentBlocked, ModerationUnavailable
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.pipeline.moderation import Moderator, fold, normalise
from tertulia.gateway.settings import BackendSettings, ModerationSettings
from tests.fakes.openai_backend import FakeBackend


def moderator(
    *terms: str,
    guard_url: str | None = None,
    metrics: GatewayMetrics | None = None,
    guard_failure: str = "refuse",
) -> Moderator:
    metrics = metrics or GatewayMetrics.create()
    settings = ModerationSettings.model_validate(
        {
            "blocked_terms": list(terms),
            "guard_url": guard_url,
            "guard_model": "guard",
            "guard_failure": guard_failure,
        }
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


def test_output_scanner_holds_back_the_start_of_a_term_until_it_is_settled() -> None:
    scanner = moderator("contraband").scanner()
    # "contra" may be the start of the term: nothing of it is sent.
    assert scanner.feed("We sell contra") == "We sell "
    # The whole term, but "contrabands" would not be it: still held.
    assert scanner.feed("band") == ""
    # A space settles it: blocked, and no part of it ever went out.
    assert scanner.feed(" here") is None


def test_output_scanner_releases_a_longer_word_once_it_is_not_a_term() -> None:
    scanner = moderator("contraband").scanner()
    assert scanner.feed("the contra") == "the "
    assert scanner.feed("bandist says") == "contrabandist says"
    assert scanner.finish() == ""


def test_output_scanner_blocks_a_term_that_ends_the_answer() -> None:
    scanner = moderator("contraband").scanner()
    assert scanner.feed("buy contraband") == "buy "
    assert scanner.finish() is None


@pytest.mark.parametrize(
    "split",
    [
        "contra\u200bband",  # zero-width space
        "contra\u200dband",  # zero-width joiner
        "contra\u00adband",  # soft hyphen
        "con\u2060traband",  # word joiner
        "contr\ufeffaband",  # zero-width no-break space
        "c\u0301ontraband",  # a combining accent
    ],
)
def test_a_term_split_by_an_invisible_character_is_still_the_term(split: str) -> None:
    checker = moderator("contraband")
    assert checker.blocked_term(f"buy {split} now") == "contraband"
    scanner = checker.scanner()
    released = [scanner.feed(character) for character in f"buy {split} now"]
    assert None in released
    assert "".join(part for part in released if part) == "buy "


async def test_every_text_given_is_checked() -> None:
    checker = moderator("contraband")
    await checker.check_input("hello", "", "fine context")
    with pytest.raises(ContentBlocked):
        await checker.check_input("hello", "about con\u200btraband")


def test_output_scanner_without_terms_never_blocks() -> None:
    scanner = moderator().scanner()
    assert scanner.feed("anything at all") == "anything at all"
    assert scanner.finish() == ""


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


async def test_a_failing_guard_model_refuses_with_503_by_default_and_counts_the_error(
    fake: FakeBackend, fake_url: str
) -> None:
    fake.config.fail_status = 500
    metrics = GatewayMetrics.create()
    checker = moderator(guard_url=fake_url, metrics=metrics)

    with pytest.raises(ModerationUnavailable) as raised:
        await checker.check_input("hello")

    assert raised.value.status_code == 503
    assert raised.value.headers["Retry-After"]
    assert (
        metrics.registry.get_sample_value(
            "tertulia_gateway_backend_errors_total", {"kind": "guard"}
        )
        == 1
    )


async def test_a_failing_guard_model_set_to_allow_lets_the_message_through(
    fake: FakeBackend, fake_url: str
) -> None:
    fake.config.fail_status = 500
    checker = moderator(guard_url=fake_url, guard_failure="allow")

    await checker.check_input("hello")


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
def test_a_stream_sends_what_the_whole_text_allows_and_never_part_of_a_term(
    pieces: list[str], cuts: Any
) -> None:
    scanning = moderator("secret", "pass word", "cafe")
    text = "".join(pieces)
    # The same text cut into deltas anywhere, words and spaces split across them.
    points = sorted(cuts.sample(range(len(text) + 1), min(len(text), 8)))
    deltas = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    scanner = scanning.scanner()
    sent = ""
    blocked = False
    for delta in deltas:
        released = scanner.feed(delta)
        if released is None:
            blocked = True
            break
        sent += released
    if not blocked:
        rest = scanner.finish()
        blocked = rest is None
        sent += rest or ""
    whole = normalise(text)
    found = scanning.matches(whole)
    # Blocked exactly when the whole text holds a term...
    assert blocked == bool(found), (deltas, sent)
    if found:
        # ...and not one character of that term was sent.
        assert len(normalise(sent)) <= found[0].start(), (deltas, sent)
    else:
        assert sent == text, deltas


def test_a_stream_holds_back_no_more_than_a_term(monkeypatch: pytest.MonkeyPatch) -> None:
    scanner = moderator("forbidden").scanner()
    held = []
    for delta in ["word ", "for", "bid ", "for "] * 2000:
        assert scanner.feed(delta) is not None
        held.append(len(scanner._pending))
    # Each token costs the few characters held, not the whole answer again.
    assert max(held) <= len("forbidden")
