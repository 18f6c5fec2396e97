"""Memory: each conversation's turns, keyed by who asked (API key and user) and where
(the conversation id: platform, channel and thread for the bots), so one user's history
never reaches another's prompt. Bounded by turns in storage and by tokens in the prompt.
"""

from __future__ import annotations

from tertulia.gateway.pipeline.auth import Identity
from tertulia.gateway.pipeline.prompt import estimate_tokens
from tertulia.gateway.settings import MemorySettings
from tertulia.gateway.store import Store, Turn, hashed_key


def conversation_key(identity: Identity, user: str, conversation_id: str) -> str:
    return hashed_key("tertulia:conversation", identity.name, user, conversation_id)


def fit_history(history: list[Turn], budget_tokens: int) -> list[Turn]:
    """The newest turns whose estimated tokens fit `budget_tokens`; the oldest go first."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(history):
        cost = estimate_tokens(turn.content)
        if used + cost > budget_tokens:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    # A reply without the message it answered would confuse the model.
    while kept and kept[0].role == "assistant":
        kept.pop(0)
    return kept


def remembered(settings: MemorySettings, key: str | None) -> str | None:
    """The conversation to read before answering: none when memory is off or it is new."""
    return key if settings.max_turns and key is not None else None


async def remember(
    store: Store, settings: MemorySettings, key: str, message: str, reply: str
) -> None:
    if settings.max_turns == 0:
        return
    turns = [Turn(role="user", content=message), Turn(role="assistant", content=reply)]
    await store.append(key, turns, settings.max_turns * 2, settings.ttl_seconds)
