"""Slack with slack_bolt: Socket Mode or the HTTP Events API; answers stream into the thread.

Mentions (`app_mention`) and direct messages (`message.im`) are answered in the message's
thread; the thread is the conversation, and so is a direct message channel outside threads.
Answers use Slack's native streaming (`chat.startStream`/`appendStream`/`stopStream` through
slack_sdk's ChatStream); where a workspace refuses it, the bot posts and updates instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_chat_stream import AsyncChatStream
from slack_sdk.web.async_client import AsyncWebClient

from tertulia.bots.adapter import IncomingMessage, Reply
from tertulia.bots.runtime import BotRuntime, serve_app

logger = logging.getLogger(__name__)

# Slack truncates a message's text past 40,000 characters.
MESSAGE_LIMIT = 40_000
SLACK_API = "https://slack.com/api/"
# Retries of a 429, each after the Retry-After Slack sends.
RATE_LIMIT_RETRIES = 5
# One markdown_text of chat.startStream, appendStream or stopStream holds at most this much.
MARKDOWN_TEXT_LIMIT = 12_000
# chat.update is a Tier 3 method: about 50 calls a minute per workspace, whatever the number
# of answers streaming at once. A little under, for the calls in flight.
UPDATES_PER_MINUTE = 45


class MethodBudget:
    """The calls of one Web API method this process may make, evenly spaced so that no
    minute holds more than `per_minute` of them."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 60.0 / per_minute
        self.clock = clock
        self.next_at = -math.inf

    def try_take(self) -> bool:
        """A call now, if the budget has one; a preview that finds none is skipped."""
        now = self.clock()
        if now < self.next_at:
            return False
        self.next_at = now + self.interval
        return True

    async def take(self) -> None:
        """Wait for the next call the budget allows: for what must be sent."""
        now = self.clock()
        start = max(now, self.next_at)
        self.next_at = start + self.interval
        await asyncio.sleep(start - now)


class SlackReply(Reply):
    append_only = True

    def __init__(
        self,
        client: AsyncWebClient,
        event: dict[str, Any],
        team: str | None,
        limit: int,
        updates: MethodBudget,
    ) -> None:
        self.client = client
        self.updates = updates
        self.channel = str(event["channel"])
        self.thread_ts = str(event.get("thread_ts") or event["ts"])
        self.team = team
        self.user = event.get("user")
        self.limit = limit
        self.native = True
        self.streams: dict[int, AsyncChatStream] = {}
        self.streamed: dict[int, str] = {}
        self.posted: dict[int, str] = {}

    async def typing(self) -> None:
        # Slack has no typing indicator for bots; AI apps show a thread status instead.
        await self.client.assistant_threads_setStatus(
            channel_id=self.channel, thread_ts=self.thread_ts, status="is typing..."
        )

    async def show(self, index: int, text: str) -> None:
        if self.native:
            try:
                await self._stream(index, text)
                return
            except SlackApiError as error:
                if index in self.streams:
                    raise
                logger.info(
                    "native streaming refused; updating messages instead",
                    extra={"error": error.response.get("error")},
                )
                self.native = False
        await self._post_or_update(index, text, preview=True)

    async def notice(self, text: str) -> None:
        await self.client.chat_postMessage(
            channel=self.channel, thread_ts=self.thread_ts, text=text
        )

    async def finish(self, index: int, text: str) -> None:
        if index in self.streams:
            stream = self.streams.pop(index)
            await _append(stream, text[len(self.streamed.pop(index)) :])
            await stream.stop()
        else:
            await self._post_or_update(index, text, preview=False)

    async def _stream(self, index: int, text: str) -> None:
        stream = self.streams.get(index)
        if stream is None:
            # Flush every append at once: the adapter already spaces updates out.
            stream = await self.client.chat_stream(
                buffer_size=1,
                channel=self.channel,
                thread_ts=self.thread_ts,
                recipient_team_id=self.team,
                recipient_user_id=self.user,
            )
            # The first call is chat.startStream (which a workspace may refuse), the others
            # chat.appendStream.
            await stream.append(markdown_text=text[:MARKDOWN_TEXT_LIMIT])
            self.streams[index] = stream
            await _append(stream, text[MARKDOWN_TEXT_LIMIT:])
            self.streamed[index] = text
            return
        delta = text[len(self.streamed[index]) :]
        if delta:
            await _append(stream, delta)
            self.streamed[index] = text

    async def _post_or_update(self, index: int, text: str, *, preview: bool) -> None:
        if index in self.posted:
            # chat.update's budget is the workspace's: a preview without one is skipped,
            # the final text waits for one.
            if preview and not self.updates.try_take():
                return
            if not preview:
                await self.updates.take()
            await self.client.chat_update(channel=self.channel, ts=self.posted[index], text=text)
        else:
            response = await self.client.chat_postMessage(
                channel=self.channel, thread_ts=self.thread_ts, text=text
            )
            self.posted[index] = str(response["ts"])


async def _append(stream: AsyncChatStream, text: str) -> None:
    """Text into a stream, in calls of at most MARKDOWN_TEXT_LIMIT characters."""
    for start in range(0, len(text), MARKDOWN_TEXT_LIMIT):
        await stream.append(markdown_text=text[start : start + MARKDOWN_TEXT_LIMIT])


def incoming(event: dict[str, Any], body: dict[str, Any], bot_user_id: str) -> IncomingMessage:
    direct = event.get("channel_type") == "im"
    thread = event.get("thread_ts") or (None if direct else event.get("ts"))
    text = str(event.get("text") or "")
    mention = f"<@{bot_user_id}>"
    return IncomingMessage(
        platform="slack",
        channel=str(event["channel"]),
        thread=thread,
        user=str(event.get("user") or event.get("bot_id") or "unknown"),
        text=text,
        direct=direct,
        mentions_bot=event.get("type") == "app_mention" or mention in text,
        from_bot=bool(event.get("bot_id")) or event.get("subtype") == "bot_message",
        event_id=body.get("event_id"),
        mention_markup=(mention,),
    )


def build_app(runtime: BotRuntime) -> tuple[AsyncApp, AsyncWebClient]:
    settings = runtime.settings
    client = AsyncWebClient(
        token=settings.secret("bot-token"), base_url=settings.api_url or SLACK_API
    )
    client.retry_handlers.append(
        AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES)
    )
    events_mode = settings.mode == "events"
    app = AsyncApp(
        client=client,
        signing_secret=settings.secret("signing-secret") if events_mode else None,
        # Socket Mode has no HTTP requests to verify; the Events API must verify each one.
        request_verification_enabled=events_mode,
        # Acknowledge first: an answer takes longer than Slack's 3-second ack deadline.
        process_before_response=False,
    )
    limit = settings.limit(MESSAGE_LIMIT)
    updates = MethodBudget(UPDATES_PER_MINUTE)

    async def on_event(event: dict[str, Any], body: dict[str, Any], context: Any) -> None:
        message = incoming(event, body, context.bot_user_id or "")
        # One handler for both subscriptions: an im message or a mention, never a channel's chatter.
        if event.get("type") == "message" and not message.direct:
            return
        if event.get("subtype") not in (None, "thread_broadcast", "bot_message"):
            return  # edits, joins and deletions are not questions
        reply = SlackReply(context.client or client, event, body.get("team_id"), limit, updates)
        await runtime.adapter.handle(message, reply)

    app.event("app_mention")(on_event)
    app.event("message")(on_event)
    return app, client


async def serve(runtime: BotRuntime) -> None:
    settings = runtime.settings
    app, client = build_app(runtime)
    identity = await client.auth_test()
    logger.info("authenticated with Slack", extra={"bot_user_id": identity.get("user_id")})
    if settings.mode == "events":
        server = await serve_app(app.web_app(), settings.webhook_host, settings.webhook_port)
        runtime.connected = True
        try:
            await asyncio.Event().wait()
        finally:
            await server.cleanup()
        return
    handler = AsyncSocketModeHandler(app, settings.secret("app-token"))
    await handler.connect_async()
    runtime.connected = True
    try:
        # The Socket Mode client reconnects by itself when Slack drops the connection.
        await asyncio.Event().wait()
    finally:
        await handler.close_async()
