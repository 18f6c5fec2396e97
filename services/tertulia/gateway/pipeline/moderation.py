"""Moderation: configured blocked terms, matched as whole words after Unicode normalisation,
on the way in and on the way out; and an optional guard model asked about each message.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import TYPE_CHECKING

from tertulia.gateway.errors import ContentBlocked, GatewayError
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.settings import ModerationSettings

if TYPE_CHECKING:
    from tertulia.gateway.backend import Backend

logger = logging.getLogger(__name__)


def normalise(text: str) -> str:
    """Fold case, compatibility forms (full-width letters, ligatures) and accents; one space
    between words."""
    if text.isascii():
        # Nothing to fold but case, and ASCII's casefold is lower(): the common case, fast.
        return " ".join(text.lower().split())
    return fold(text)


def fold(text: str) -> str:
    """`normalise` for any text."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    without_marks = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return " ".join(without_marks.split())


class OutputScanner:
    """Watches a streamed answer; `feed` says whether the text so far holds a blocked term.

    Each delta is normalised once, and only the stretch where a term ending in it could start
    is searched and kept (the longest term, and one character before it for the whole-word
    check): the work and memory per token stay constant however long the answer grows, where
    keeping and searching the whole text again on every token is quadratic."""

    def __init__(self, moderator: Moderator) -> None:
        self._moderator = moderator
        self._text = ""  # the answer's last characters, normalised
        self._space = False  # the last delta ended in whitespace, not yet written

    def feed(self, delta: str) -> bool:
        if not self._moderator.has_terms or not delta:
            return False
        piece = normalise(delta)
        starts_spaced = delta[:1].isspace()
        if piece:
            if self._text and (self._space or starts_spaced):
                piece = " " + piece
            self._space = delta[-1:].isspace()
        else:
            self._space = self._space or bool(delta.strip() == "" and delta)
            return False
        longest = self._moderator.longest_term
        start = max(0, len(self._text) - longest)
        text = self._text + piece
        self._text = text[-(longest + 1) :]
        return self._moderator.blocked_term_from(text, start) is not None


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
        terms = sorted(
            {normalise(term) for term in settings.blocked_terms if term.strip()}, key=len
        )
        self._longest = max((len(term) for term in terms), default=0)
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

    def blocked_term(self, text: str) -> str | None:
        return self.blocked_term_from(normalise(text), 0)

    def blocked_term_from(self, normalised: str, start: int) -> str | None:
        """A blocked term in already normalised text that starts at `start` or later (the
        look-behind still sees what comes before it)."""
        if self._pattern is None:
            return None
        found = self._pattern.search(normalised, start)
        return found.group(1) if found else None

    async def check_input(self, text: str) -> None:
        """Raise ContentBlocked if the user's message holds a blocked term or the guard says no."""
        if self.blocked_term(text) is not None or not await self._guard_allows(text, "user"):
            self._metrics.moderated.labels("input").inc()
            # The term is not repeated back: the message already says what to fix.
            raise ContentBlocked("the message was blocked by this assistant's content policy")

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
        """Ask the guard model, Llama Guard style: its answer starts with 'safe' or 'unsafe'."""
        if self._guard is None:
            return True
        request = {"messages": [{"role": role, "content": text}], "max_tokens": 8, "temperature": 0}
        try:
            result = await self._guard.complete(request)
            verdict = str(result["choices"][0]["message"]["content"]).strip().lower()
        except (GatewayError, KeyError, IndexError, TypeError) as error:
            # A guard that cannot answer must not silence the assistant; it is logged and counted.
            logger.warning(
                "the guard model failed; allowing the message", extra={"error": str(error)}
            )
            self._metrics.backend_errors.labels("guard").inc()
            return True
        return not verdict.startswith("unsafe")
