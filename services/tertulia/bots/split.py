"""Splitting a long answer into messages a platform accepts, losing nothing.

A piece ends at the best boundary that fits: a paragraph, a line, a sentence, a word, and
only when none exists, mid-word. A code fence cut by a split is closed at the end of one
piece and reopened, with its language, at the start of the next.
"""

from __future__ import annotations

import re

FENCE = "```"
_CLOSING = "\n" + FENCE
_SENTENCE_END = re.compile(r"[.!?][)\"']?\s")


def _open_fence(text: str) -> str | None:
    """The opening line (with its language) of a fence still open at the end of `text`."""
    opening: str | None = None
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith(FENCE):
            opening = None if opening is not None else stripped
    return opening


def _best_cut(text: str, limit: int) -> int:
    """Where to end the first piece of `text`: an index in (0, limit]."""
    window = text[:limit]
    floor = limit // 3  # a boundary too early would make many tiny pieces
    for pattern in ("\n\n", "\n"):
        at = window.rfind(pattern)
        if at > floor:
            return at + len(pattern)
    sentence_ends = [match.end() for match in _SENTENCE_END.finditer(window)]
    if sentence_ends and sentence_ends[-1] > floor:
        return sentence_ends[-1]
    at = max(window.rfind(" "), window.rfind("\t"))
    if at > floor:
        return at + 1
    return limit


def split_first(text: str, limit: int) -> tuple[str, str]:
    """The first piece (at most `limit` characters) and what remains of `text`.

    The remainder starts with a reopened fence when the cut fell inside a code block.
    """
    if limit < 4 * len(_CLOSING):
        raise ValueError(f"a message limit of {limit} characters is too small to split")
    if len(text) <= limit:
        return text, ""
    # Leave room to close a fence the cut may fall in.
    cut = _best_cut(text, limit - len(_CLOSING))
    head, rest = text[:cut], text[cut:]
    fence = _open_fence(head)
    if fence is None:
        return head.rstrip(), rest.lstrip("\n")
    return head.rstrip("\n") + _CLOSING, f"{fence}\n{rest.lstrip(chr(10))}"


def split_message(text: str, limit: int) -> list[str]:
    """Every piece of `text`, each at most `limit` characters, none empty; trailing
    whitespace is dropped, as every platform drops it."""
    pieces: list[str] = []
    rest = text
    while rest:
        piece, rest = split_first(rest, limit)
        if piece.strip():
            pieces.append(piece.rstrip())
    return pieces
