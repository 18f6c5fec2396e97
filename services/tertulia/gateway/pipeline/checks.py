"""Input checks: sizes within the configured limits, and no control characters."""

from __future__ import annotations

import re

from tertulia.gateway.errors import InvalidInput, PayloadTooLarge

# C0 controls and DEL, except tab, line feed and carriage return, which text may hold.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_text(field: str, text: str, limit: int, *, required: bool = False) -> None:
    """Raise 413 when `text` is over `limit` characters, 422 when it is empty or has controls."""
    if len(text) > limit:
        raise PayloadTooLarge(f"{field} is {len(text)} characters long; the limit is {limit}")
    if required and not text.strip():
        raise InvalidInput(f"{field} is empty")
    found = _CONTROL_CHARACTERS.search(text)
    if found:
        raise InvalidInput(
            f"{field} contains the control character U+{ord(found.group()):04X} "
            f"at position {found.start()}"
        )
