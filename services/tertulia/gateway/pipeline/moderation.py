"""Moderation: configured blocked terms, matched as whole words after Unicode normalisation, in
every text the model is given (the message, its context, each message of an OpenAI request,
the passages retrieved) and in what it answers; and an optional guard model asked about each
request and answer.

Normalisation folds what a reader would not tell apart: compatibility forms (full-width
letters, ligatures: NFKC), case, accents, and characters that print as nothing (zero-width
spaces and joiners, soft hyphens: Unicode's format characters), so a term split by one of
them is still the term. A streamed answer is held back while its last characters could be
the start of a blocked term, so no part of one is ever sent.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from typing import TYPE_CHECKING

from tertulia.gateway.errors import ContentBlocked, GatewayError, ModerationUnavailable
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.settings import ModerationSettings

if TYPE_CHECKING:
    from tertulia.gateway.backend import Backend
    from tertulia.gateway.pipeline.retrieval import Passage

logger = logging.getLogger(__name__)

# Format characters (zero-width space, joiners, soft hyphen, bidi marks), and the marks that
# combine with the letter before them (accents, variation selectors): dropped.
_DROPPED = frozenset({"Cf", "Mn", "Me"})
# How long a guard model that failed is not asked again before a request is refused.
GUARD_RETRY_AFTER_SECONDS = 10.0


@functools.lru_cache(maxsize=4096)
def fold_character(character: str) -> str:
    """One character as moderation compares it: "" for what prints as nothing, " " for any
    space, else its compatibility form, case folded, without accents."""
    if character.isspace():
        return " "
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", character).casefold())
    return "".join(ch for ch in folded if unicodedata.category(ch) not in _DROPPED)


def normalise(text: str) -> str:
    """Fold case, compatibility forms (full-width letters, ligatures), accents and characters
    that print as nothing; one space between words."""
    if text.isascii():
        # Nothing to fold but case, and ASCII's casefold is lower(): the common case, fast.
        return " ".join(text.lower().split())
    return fold(text)


def fold(text: str) -> str:
    """`normalise` for any text: each character folded on its own (so a stream folds the same
    piece by piece as whole), the spaces between words made one."""
    return " ".join("".join(map(fold_character, text)).split())


class OutputScanner:
    """Watches a streamed answer and says what of it may be sent.

    `feed` takes each delta and returns the text that may go to the user now, or None once
    the answer holds a blocked term; `finish` returns the rest at the end (None likewise).
    What is held back is the shortest tail that could still grow into a blocked term, or a
    term whose next character decides whether it is a whole word: the terms are short, so
    the hold is a few characters, and a stream without terms passes through untouched."""

    def __init__(self, moderator: Moderator) -> None:
        self._moderator = moderator
        self._pending = ""  # raw text received and not yet released
        self._last = " "  # the last normalised character released (a word boundary at first)

    @property
    def holding(self) -> bool:
        return bool(self._pending)

    def feed(self, delta: str) -> str | None:
        if not self._moderator.has_terms:
            return delta
        self._pending += delta
        return self._release(final=False)

    def finish(self) -> str | None:
        """The text still held, now that the answer is complete; None if it ends in a term."""
        if not self._moderator.has_terms:
            return ""
        return self._release(final=True)

    def _release(self, *, final: bool) -> str | None:
        text, origins = self._fold_pending()
        moderator = self._moderator
        hold = len(text)
        # From the first pending character; the look-behind still sees the one released.
        for found in moderator.matches(self._last + text, 1):
            start, end = found.start() - 1, found.end() - 1
            if end < len(text) or final:
                return None  # a whole term: its next character (or the end) settles it
            hold = min(hold, start)  # a term that may yet grow into a longer word
            break
        if not final:
            hold = min(hold, self._hold_from(text))
        if hold == len(text):
            released, self._pending = self._pending, ""
        else:
            cut = origins[hold]
            released, self._pending = self._pending[:cut], self._pending[cut:]
        if hold:
            self._last = text[hold - 1]
        return released

    def _fold_pending(self) -> tuple[str, list[int]]:
        """The pending text normalised, and for each of its characters the index of the raw
        character it came from; spaces are collapsed, with the text released before."""
        characters: list[str] = []
        origins: list[int] = []
        previous = self._last
        for index, raw in enumerate(self._pending):
            for character in fold_character(raw):
                if character == " " and previous == " ":
                    continue
                characters.append(character)
                origins.append(index)
                previous = character
        return "".join(characters), origins

    def _hold_from(self, text: str) -> int:
        """Where the earliest tail of `text` starts that is the beginning of a blocked term
        at a word's start; len(text) when none is."""
        prefixes = self._moderator.prefixes
        for start in range(max(0, len(text) - self._moderator.longest_term), len(text)):
            before = text[start - 1] if start else self._last
            if text[start:] in prefixes and not _word(before):
                return start
        return len(text)


def _word(character: str) -> bool:
    return character.isalnum() or character == "_"


class Moderator:
    def __init__(
        self,
        settings: ModerationSettings,
        metrics: GatewayMetrics,
        guard: Backend | None = None,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._guard = guard
        terms = sorted({normalise(term) for term in settings.blocked_terms} - {""}, key=len)
        self._longest = max((len(term) for term in terms), default=0)
        # Every beginning of a term: what a stream holds back while it may still become one.
        self.prefixes = frozenset(term[:size] for term in terms for size in range(1, len(term) + 1))
        self._pattern = (
            re.compile(
                r"(?<!\w)(" + "|".join(re.escape(term) for term in reversed(terms)) + r")(?!\w)"
            )
            if terms
            else None
        )

    @property
    def has_terms(self) -> bool:
        return self._pattern is not None

    @property
    def refusal(self) -> str:
        return self.settings.refusal

    @property
    def longest_term(self) -> int:
        return self._longest

    def matches(self, normalised: str, start: int = 0) -> list[re.Match[str]]:
        """The blocked terms in already normalised text from `start` on (the look-behind
        still sees what comes before it)."""
        if self._pattern is None:
            return []
        return list(self._pattern.finditer(normalised, start))

    def blocked_term(self, text: str) -> str | None:
        if self._pattern is None:
            return None
        found = self._pattern.search(normalise(text))
        return found.group(1) if found else None

    async def check_input(self, *texts: str) -> None:
        """Raise ContentBlocked if any of the texts the model will be given holds a blocked
        term, or the guard says no to them."""
        blocked = any(self.blocked_term(text) is not None for text in texts if text)
        if blocked or not await self._guard_allows("\n\n".join(t for t in texts if t), "user"):
            self._metrics.moderated.labels("input").inc()
            # The term is not repeated back: the message already says what to fix.
            raise ContentBlocked("the message was blocked by this assistant's content policy")

    def allowed_passages(self, passages: list[Passage]) -> list[Passage]:
        """The passages without a blocked term: one that holds one is left out of the prompt
        (and counted), so a document cannot bring in what a user could not."""
        if not self.has_terms:
            return passages
        kept = [passage for passage in passages if self.blocked_term(passage.text) is None]
        if len(kept) < len(passages):
            self._metrics.moderated.labels("passage").inc(len(passages) - len(kept))
        return kept

    async def output_allowed(self, text: str) -> bool:
        """Whether a whole answer may be shown; counts a block."""
        allowed = self.blocked_term(text) is None and await self._guard_allows(text, "assistant")
        if not allowed:
            self.count_output_block()
        return allowed

    def count_output_block(self) -> None:
        self._metrics.moderated.labels("output").inc()

    def scanner(self) -> OutputScanner:
        return OutputScanner(self)

    async def _guard_allows(self, text: str, role: str) -> bool:
        """Ask the guard model, Llama Guard style: its answer starts with 'safe' or 'unsafe'.
        A guard that cannot answer refuses the request (503, `guard_failure: refuse`, the
        default) or lets it through (`allow`); either way it is logged and counted."""
        if self._guard is None:
            return True
        request = {"messages": [{"role": role, "content": text}], "max_tokens": 8, "temperature": 0}
        try:
            result = await self._guard.complete(request)
            verdict = str(result["choices"][0]["message"]["content"]).strip().lower()
        except (GatewayError, KeyError, IndexError, TypeError) as error:
            self._metrics.backend_errors.labels("guard").inc()
            if self.settings.guard_failure == "allow":
                logger.warning(
                    "the guard model failed; allowing the message", extra={"error": str(error)}
                )
                return True
            logger.warning(
                "the guard model failed; refusing the message", extra={"error": str(error)}
            )
            raise ModerationUnavailable(
                "the content policy's guard model cannot be reached; try again shortly",
                retry_after=GUARD_RETRY_AFTER_SECONDS,
            ) from None
        return not verdict.startswith("unsafe")
