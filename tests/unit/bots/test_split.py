"""Splitting answers under a platform's limit: best boundaries, balanced fences, no loss."""

from __future__ import annotations

import pytest

from tertulia.bots.split import FENCE, split_first, split_message

LIMITS = {"discord": 2000, "telegram": 4096, "slack": 40_000}


def words(pieces: list[str]) -> list[str]:
    return [w for w in " ".join(pieces).split() if not w.startswith(FENCE)]


def test_short_text_is_one_piece() -> None:
    assert split_message("Hello.", 2000) == ["Hello."]


@pytest.mark.parametrize("platform", sorted(LIMITS))
def test_long_prose_splits_at_paragraphs_under_each_platforms_limit(platform: str) -> None:
    limit = LIMITS[platform]
    paragraph = "The sea is wide and deep. " * 20
    text = "\n\n".join(f"{index}: {paragraph}".strip() for index in range(limit // 200))
    pieces = split_message(text, limit)
    assert len(pieces) > 1
    assert all(len(piece) <= limit for piece in pieces)
    assert all(piece.endswith(".") for piece in pieces), "a piece ended mid-paragraph"
    assert words(pieces) == text.split()


def test_a_paragraph_longer_than_the_limit_splits_at_a_sentence() -> None:
    text = "One sentence here. " * 30
    pieces = split_message(text, 100)
    assert all(len(piece) <= 100 and piece.endswith(".") for piece in pieces)
    assert words(pieces) == text.split()


def test_text_without_spaces_is_cut_hard_and_nothing_is_lost() -> None:
    text = "x" * 250
    pieces = split_message(text, 100)
    assert "".join(pieces) == text
    assert all(len(piece) <= 100 for piece in pieces)


def test_a_cut_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"print({index})" for index in range(40))
    text = f"Here is the code:\n\n```python\n{code}\n```\n\nThat is all."
    pieces = split_message(text, 200)
    assert len(pieces) > 2
    for piece in pieces:
        assert len(piece) <= 200
        assert piece.count(FENCE) % 2 == 0, f"unbalanced fences in {piece!r}"
    assert pieces[1].startswith("```python\n")
    lines = [line for piece in pieces for line in piece.splitlines() if line.startswith("print(")]
    assert lines == code.splitlines()


def test_split_first_keeps_the_remainder_whole() -> None:
    head, rest = split_first("First paragraph.\n\nSecond paragraph.", 20)
    assert head == "First paragraph."
    assert rest == "Second paragraph."


def test_a_limit_too_small_to_hold_a_fence_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        split_first("x" * 100, 10)
