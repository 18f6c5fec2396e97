"""Input checks refuse oversized text with 413 and control characters with 422."""

from __future__ import annotations

import pytest

from tertulia.gateway.errors import InvalidInput, PayloadTooLarge
from tertulia.gateway.pipeline.checks import check_text


def test_text_within_the_limit_with_newlines_and_tabs_passes() -> None:
    check_text("message", "line one\n\tline two\r\n", limit=100, required=True)


def test_text_over_the_limit_is_refused_with_its_length_and_the_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="message is 11 characters long; the limit is 10"):
        check_text("message", "x" * 11, limit=10)


def test_control_character_is_named_with_its_position() -> None:
    with pytest.raises(InvalidInput, match=r"U\+0007 at position 5"):
        check_text("context", "hello\x07", limit=100)


def test_blank_required_text_is_refused() -> None:
    with pytest.raises(InvalidInput, match="message is empty"):
        check_text("message", "  \n ", limit=100, required=True)
