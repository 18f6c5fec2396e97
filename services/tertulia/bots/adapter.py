"""The behaviour every bot shares; a platform module only translates events and messages.

The adapter decides whether to answer (direct messages and mentions, never bots), drops
redelivered events, runs the reset and help commands, shows typing, streams the gateway's
answer into pieces under the platform's limit and turns gateway failures into a message
the user can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from tertulia.bots.dedup import Deduplicator
from tertulia.bots.metrics import BotMetrics
from tertulia.bots.split import split_first, split_message
from tertulia.common.gateway_client import (
    GatewayClient,
    GatewayError,
    GatewayRateLimited,
    GatewayRefused,
    GatewayUnavailable,
    Source,
)
from tertulia.common.logging import content

logger = logging.getLogger(__name__)

HELP_TEXT = (
    "I answer questions with a private language model. Mention me in a channel or send me a "
    "direct message; in a thread I remember what we said.\n"
    "Commands: `reset` forgets this conversation, `help` shows this message."
)
RESET_DONE = "Done: I have forgotten this conversation. The next message starts afresh."
RESET_NOTHING = "There was nothing to forget: this conversation had no memory yet."
UNAVAILABLE = (
    "Sorry, I cannot answer right now: my language model is unavailable. "
    "Please try again in a minute."
)
REFUSED = "Sorry, I cannot answer that: {reason}."
RATE_LIMITED = (
    "I am getting more messages than I can answer. Please try again in {seconds} seconds."
)
STILL_WAITING = (
    "_(Still working on it: the model is starting up or busy. The answer will follow here.)_"
)
# The same, when the gateway says the model sleeps (scaled to zero while idle) and is waking.
WAKING = (
    "_(The model was asleep, scaled down while nobody asked, and is waking up: that can take "
    "a few minutes. The answer will follow here.)_"
)
EMPTY_ANSWER = "_(The model gave an empty answer. Please rephrase your question.)_"
CUT_OFF = "\n\n_(The answer was interrupted. Please ask again.)_"
# After an answer the gateway gave without the conversation's memory (its store was away).
FORGETFUL = (
    "\n\n_(My memory of this conversation is unavailable for a moment: I answered without "
    "what was said before, and will not remember this exchange.)_"
)

# Words that are commands when they are the whole message, with or without a / or ! prefix.
_COMMANDS = {"reset": "reset", "forget": "reset", "help": "help", "start": "help"}
# The conversation id the gateway accepts: letters, digits and a few separators.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@/+=-]")


@dataclass(frozen=True)
class IncomingMessage:
    """One message as every platform can describe it."""

    platform: str
    channel: str
    user: str
    text: str
    thread: str | None = None
    direct: bool = False
    mentions_bot: bool = False
    from_bot: bool = False
    event_id: str | None = None
    # How the bot's mention appears in `text`, to be removed before the gateway sees it.
    mention_markup: tuple[str, ...] = ()

    @property
    def conversation_id(self) -> str:
        raw = f"{self.platform}:{self.channel}:{self.thread or 'main'}"
        return _UNSAFE.sub("_", raw)[:256]

    @property
    def gateway_user(self) -> str:
        return _UNSAFE.sub("_", f"{self.platform}:{self.user}")[:256]

    def question(self) -> str:
        text = self.text
        for markup in self.mention_markup:
            text = text.replace(markup, " ")
        return text.strip()


class Reply(ABC):
    """Where one answer goes: the platform writes piece `index` of it as a message.

    `show` is a preview while the answer is generated (called at most once per stream
    interval, with the piece's text so far); `finish` gives the piece's final text. A
    platform whose preview can only grow (`append_only`) is shown only text that a later
    split cannot move into the next piece.
    """

    limit: int
    append_only: bool = False

    @abstractmethod
    async def typing(self) -> None: ...

    @abstractmethod
    async def show(self, index: int, text: str) -> None: ...

    @abstractmethod
    async def finish(self, index: int, text: str) -> None: ...

    @abstractmethod
    async def notice(self, text: str) -> None:
        """A short message of its own beside the answer (not one of its pieces): the answer
        is slow to begin."""

    async def say(self, text: str) -> None:
        """A whole message at once: errors, command results."""
        for index, piece in enumerate(split_message(text, self.limit)):
            await self.finish(index, piece)

    async def say_help(self, text: str) -> None:
        """The help text, in the platform's richest form (Discord: an embed)."""
        await self.say(text)


def format_sources(sources: list[Source]) -> str:
    if not sources:
        return ""
    seen: list[str] = []
    for source in sources:
        if source.label() not in seen:
            seen.append(source.label())
    return "\n\nSources: " + "; ".join(seen)


class Adapter:
    def __init__(
        self,
        gateway: GatewayClient,
        deduplicator: Deduplicator,
        metrics: BotMetrics,
        *,
        stream_interval: float = 1.0,
        typing_interval: float = 4.0,
        waiting_notice_after: float = 15.0,
    ) -> None:
        self.gateway = gateway
        self.deduplicator = deduplicator
        self.metrics = metrics
        self.stream_interval = stream_interval
        self.typing_interval = typing_interval
        # An answer that has not begun this long after the question (a model scaled to zero
        # waking up, a busy one) is announced once, so the silence is not taken for failure.
        self.waiting_notice_after = waiting_notice_after

    def should_answer(self, message: IncomingMessage) -> bool:
        return not message.from_bot and (message.direct or message.mentions_bot)

    async def handle(self, message: IncomingMessage, reply: Reply) -> None:
        """Answer `message` through `reply` if it is for the bot; never raises."""
        if not self.should_answer(message):
            return
        if message.event_id and not await self.deduplicator.first_delivery(
            message.platform, message.event_id
        ):
            logger.info("dropped a redelivered event", extra={"platform": message.platform})
            return
        self.metrics.received.labels(message.platform).inc()
        started = time.monotonic()
        question = message.question()
        logger.info(
            "message received",
            extra={
                "platform": message.platform,
                "direct": message.direct,
                "message_text": content(question),
            },
        )
        try:
            command = _COMMANDS.get(question.lstrip("/!").lower()) if question else "help"
            if command == "help":
                await reply.say_help(HELP_TEXT)
            elif command == "reset":
                await self.reset(message, reply)
            else:
                await self.answer(message, question, reply)
            self.metrics.latency.labels(message.platform).observe(time.monotonic() - started)
        except Exception as error:
            self.metrics.errors.labels(message.platform, type(error).__name__).inc()
            logger.exception("could not answer", extra={"platform": message.platform})
            with contextlib.suppress(Exception):
                await reply.say(UNAVAILABLE)

    async def reset(self, message: IncomingMessage, reply: Reply) -> None:
        try:
            forgotten = await self.gateway.reset(
                conversation_id=message.conversation_id, user=message.gateway_user
            )
        except (GatewayUnavailable, GatewayRateLimited, GatewayRefused) as error:
            await reply.say(self._failure_text(message, error))
            return
        await reply.say(RESET_DONE if forgotten else RESET_NOTHING)
        self.metrics.sent.labels(message.platform).inc()

    async def answer(self, message: IncomingMessage, question: str, reply: Reply) -> None:
        writer = _PieceWriter(reply, self.stream_interval)
        typing = asyncio.create_task(self._keep_typing(reply))
        waiting = asyncio.create_task(self._say_still_waiting(reply))
        sources: list[Source] = []
        notice = ""
        try:
            async for event in self.gateway.stream_chat(
                question, conversation_id=message.conversation_id, user=message.gateway_user
            ):
                if event.kind == "meta":
                    sources = event.sources
                if event.kind in ("meta", "done") and event.data.get("notice"):
                    notice = FORGETFUL
                elif event.kind == "token" and event.text:
                    typing.cancel()
                    waiting.cancel()
                    await writer.add(event.text)
        except (GatewayUnavailable, GatewayRateLimited, GatewayRefused) as error:
            if writer.started and isinstance(error, GatewayUnavailable):
                await writer.close(CUT_OFF)
            else:
                await reply.say(self._failure_text(message, error))
            return
        finally:
            typing.cancel()
            waiting.cancel()
        if not writer.started:
            await reply.say(EMPTY_ANSWER)
            return
        pieces = await writer.close(format_sources(sources) + notice)
        self.metrics.sent.labels(message.platform).inc(pieces)

    def _failure_text(self, message: IncomingMessage, error: Exception) -> str:
        self.metrics.errors.labels(message.platform, type(error).__name__).inc()
        logger.warning(
            "the gateway did not answer",
            extra={"platform": message.platform, "error": type(error).__name__},
        )
        if isinstance(error, GatewayRateLimited):
            return RATE_LIMITED.format(seconds=max(1, round(error.retry_after)))
        if isinstance(error, GatewayRefused):
            return REFUSED.format(reason=error.message.rstrip("."))
        return UNAVAILABLE

    async def _say_still_waiting(self, reply: Reply) -> None:
        await asyncio.sleep(self.waiting_notice_after)
        with contextlib.suppress(Exception):
            try:
                asleep = await self.gateway.model_asleep()
            except GatewayError:
                asleep = False  # the gateway cannot say; the plain notice is true either way
            await reply.notice(WAKING if asleep else STILL_WAITING)

    async def _keep_typing(self, reply: Reply) -> None:
        with contextlib.suppress(Exception):
            while True:
                await reply.typing()
                await asyncio.sleep(self.typing_interval)


class _PieceWriter:
    """Turns a stream of tokens into pieces under the limit, previewing the open piece."""

    def __init__(
        self, reply: Reply, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.reply = reply
        self.interval = interval
        self.clock = clock
        self.index = 0
        self.pending = ""
        self.shown = ""
        self.last_shown = 0.0
        self.started = False

    async def add(self, text: str) -> None:
        self.started = True
        self.pending += text
        while len(self.pending) > self.reply.limit:
            piece, self.pending = split_first(self.pending, self.reply.limit)
            await self._finish(piece)
        if self.clock() - self.last_shown >= self.interval:
            await self._show()

    async def close(self, footer: str = "") -> int:
        """Finish every remaining piece, with `footer` after the text; returns pieces sent."""
        for piece in split_message(self.pending + footer, self.reply.limit):
            await self._finish(piece)
        self.pending = ""
        return self.index

    async def _show(self) -> None:
        preview = self.pending
        if self.reply.append_only:
            # A later split never cuts before a third of the limit (see split.py), so this
            # much of the open piece is certain to stay in it.
            preview = preview[: self.reply.limit // 4]
            if not preview.startswith(self.shown):
                return
        preview = preview.rstrip()
        if preview and preview != self.shown:
            await self.reply.show(self.index, preview)
            self.shown = preview
        self.last_shown = self.clock()

    async def _finish(self, piece: str) -> None:
        await self.reply.finish(self.index, piece)
        self.index += 1
        self.shown = ""
        self.last_shown = self.clock()
