"""Prompt assembly: the system prompt (never dropped) with the caller's extra context, the
remembered history, then the message, led by the retrieved passages.

The passages go in the user's turn, numbered, just before the question, rather than in the
system message: measured with SmolLM2-135M-Instruct at temperature 0 on 13 questions whose
answer is one phrase of a passage, the answer held that phrase 11 times this way and 7 times
with the passages in the system message (in tags, or numbered: 5 to 7). Larger models read
either; this way the passages also carry a user's authority, never the system prompt's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tertulia.gateway.pipeline.retrieval import Passage
    from tertulia.gateway.store import Turn

# About four characters a token for English with the tokenizers of current open models; a
# budget, not a bill: the model server counts exactly and reports it in `usage`.
CHARACTERS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARACTERS_PER_TOKEN) + 1


def with_passages(message: str, passages: list[Passage]) -> str:
    """The user's message led by the passages, numbered as the answer cites them."""
    if not passages:
        return message
    lines = ["Passages:"]
    lines += [f"[{number}] {p.text.strip()}" for number, p in enumerate(passages, start=1)]
    lines += ["", "Answer from the passages where they help, citing them as [1], [2].", ""]
    return "\n".join(lines) + f"Question: {message}"


def system_message(system_prompt: str, context: str | None) -> str:
    parts = [system_prompt.strip()]
    if context and context.strip():
        parts.append(
            f"Context from the conversation's platform:\n<context>\n{context.strip()}\n</context>"
        )
    return "\n\n".join(part for part in parts if part)


def assemble(
    system_prompt: str,
    history: list[Turn],
    message: str,
    *,
    passages: list[Passage] | None = None,
    context: str | None = None,
) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_message(system_prompt, context)}]
    messages += [{"role": turn.role, "content": turn.content} for turn in history]
    messages.append({"role": "user", "content": with_passages(message, passages or [])})
    return messages
