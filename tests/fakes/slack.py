"""A fake Slack: the Web API methods a bot calls, Socket Mode over a WebSocket, and signed
Events API requests sent to the bot, in Slack's wire format.

Web API calls are `POST /api/<method>` with a bearer token and a form or JSON body, answered
with `{"ok": ...}`. Socket Mode: `apps.connections.open` returns a ws:// URL; the server says
`hello`, then sends envelopes the client must acknowledge with their `envelope_id`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.platform import FakePlatform, SentMessage

BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"
SIGNING_SECRET = "fake-signing-secret"
TEAM = "T0FAKE"
BOT_USER = "U0TERTULIA"
BOT_ID = "B0TERTULIA"
MESSAGE_LIMIT = 40_000
# What one markdown_text of the streaming methods may hold.
MARKDOWN_TEXT_LIMIT = 12_000
# Tier 3 methods (chat.update): calls per minute per workspace before Slack answers 429.
TIER_3_PER_MINUTE = 50


class FakeSlack(FakePlatform):
    def __init__(self) -> None:
        super().__init__()
        self.acks: list[str] = []
        self.statuses: list[dict[str, Any]] = []
        self.streaming_enabled = True
        self._ts = itertools.count(1)
        self._updates: list[float] = []

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        return app

    # -- Web API ---------------------------------------------------------------------------
    def next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.record_call(method)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if request.content_type == "application/json":
            body = await request.json()
        else:
            body = dict(await request.post())
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != expected:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        retry_after = self.take_rate_limit(method)
        if retry_after is None and method == "chat.update":
            retry_after = self._tier_3(method)
        if retry_after is not None:
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(int(retry_after))},
            )
        handler = getattr(self, "api_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        result: dict[str, Any] = await handler(body)
        return web.json_response(result)

    def _tier_3(self, method: str) -> float | None:
        """Seconds until chat.update has a call left in its rolling minute; None if it has
        one now (the call is counted), as Slack rate-limits the method per workspace."""
        now = time.monotonic()
        self._updates = [at for at in self._updates if at > now - 60]
        if len(self._updates) >= TIER_3_PER_MINUTE:
            with self._lock:
                self.rate_limited.append((method, now))
            return max(1.0, self._updates[0] + 60 - now)
        self._updates.append(now)
        return None

    async def api_auth_test(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.com/",
            "team": "Fake",
            "user": "tertulia",
            "team_id": TEAM,
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
        }

    async def api_apps_connections_open(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://{self.host}:{self.port}/socket?ticket={uuid.uuid4()}"}

    async def api_assistant_threads_setStatus(self, body: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append(body)
        return {"ok": True}

    def _check_text(self, text: str) -> dict[str, Any] | None:
        if not text.strip():
            return {"ok": False, "error": "no_text"}
        if len(text) > MESSAGE_LIMIT:
            return {"ok": False, "error": "msg_too_long"}
        return None

    async def api_chat_postMessage(self, body: dict[str, Any]) -> dict[str, Any]:
        text = str(body.get("text") or body.get("markdown_text") or "")
        if error := self._check_text(text):
            return error
        ts = self.next_ts()
        channel = str(body["channel"])
        self.add_message(SentMessage(channel, ts, text, thread=body.get("thread_ts")))
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": text, "ts": ts}}

    async def api_chat_update(self, body: dict[str, Any]) -> dict[str, Any]:
        text = str(body.get("text") or "")
        if error := self._check_text(text):
            return error
        if self.edit_message(str(body["ts"]), text) is None:
            return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": body["channel"], "ts": body["ts"], "text": text}

    @staticmethod
    def _stream_text(body: dict[str, Any]) -> str:
        chunks = body.get("chunks") or []
        if isinstance(chunks, str):
            chunks = json.loads(chunks)
        text = str(body.get("markdown_text") or "")
        text += "".join(c.get("text", "") for c in chunks if c.get("type") == "markdown_text")
        # The markdown_text field, or markdown_text chunks (as slack_sdk's ChatStream sends).
        if len(text) > MARKDOWN_TEXT_LIMIT:
            raise ValueError("msg_too_long")
        return text

    async def api_chat_startStream(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.streaming_enabled:
            return {"ok": False, "error": "feature_not_enabled"}
        if not body.get("thread_ts"):
            return {"ok": False, "error": "invalid_arguments"}
        if body.get("channel", "").startswith("C") and not body.get("recipient_user_id"):
            return {"ok": False, "error": "missing_recipient_user_id"}
        try:
            text = self._stream_text(body)
        except ValueError as error:
            return {"ok": False, "error": str(error)}
        ts = self.next_ts()
        message = SentMessage(str(body["channel"]), ts, text, thread=str(body["thread_ts"]))
        message.extra["streaming"] = True
        self.add_message(message)
        return {"ok": True, "channel": body["channel"], "ts": ts}

    async def _append(self, body: dict[str, Any], *, stop: bool) -> dict[str, Any]:
        message = next((m for m in self.sent() if m.id == body.get("ts")), None)
        if message is None or not message.extra.get("streaming"):
            return {"ok": False, "error": "message_not_in_streaming_state"}
        try:
            text = message.text + self._stream_text(body)
        except ValueError as error:
            return {"ok": False, "error": str(error)}
        if len(text) > MESSAGE_LIMIT:
            return {"ok": False, "error": "msg_too_long"}
        self.edit_message(message.id, text)
        if stop:
            message.extra["streaming"] = False
        return {"ok": True, "channel": body["channel"], "ts": message.id}

    async def api_chat_appendStream(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._append(body, stop=False)

    async def api_chat_stopStream(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._append(body, stop=True)

    # -- Socket Mode -----------------------------------------------------------------------
    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.sockets.append(socket)
        await socket.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "connection_info": {"app_id": "A0FAKE"},
                "debug_info": {"host": "fake", "approximate_connection_time": 3600},
            }
        )
        async for frame in socket:
            if frame.type == aiohttp.WSMsgType.TEXT:
                payload = json.loads(frame.data)
                if "envelope_id" in payload:
                    self.acks.append(payload["envelope_id"])
        if socket in self.sockets:
            self.sockets.remove(socket)
        return socket

    def send_envelope(self, body: dict[str, Any], retry_attempt: int = 0) -> str:
        """Deliver an Events API body over Socket Mode; returns the envelope id."""
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
            "payload": body,
        }

        async def send() -> None:
            live = [socket for socket in self.sockets if not socket.closed]
            await live[-1].send_json(envelope)

        self.call(send())
        return envelope_id

    def drop_connections(self) -> None:
        """Close every Socket Mode connection, as Slack does when it refreshes them."""

        async def close() -> None:
            await asyncio.gather(*(socket.close() for socket in list(self.sockets)))

        self.call(close())


def event_body(
    event: dict[str, Any], *, event_id: str | None = None, team: str = TEAM
) -> dict[str, Any]:
    """An `event_callback` body around `event`, as Slack sends it."""
    return {
        "token": "verification-token",
        "team_id": team,
        "api_app_id": "A0FAKE",
        "event": {"event_ts": event.get("ts"), **event},
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": team, "user_id": BOT_USER, "is_bot": True}],
    }


def mention(
    channel: str, user: str, text: str, ts: str, thread_ts: str | None = None
) -> dict[str, Any]:
    event = {
        "type": "app_mention",
        "user": user,
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts,
        "channel": channel,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def direct_message(channel: str, user: str, text: str, ts: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "channel_type": "im",
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        **extra,
    }


def signed_headers(body: bytes, *, secret: str = SIGNING_SECRET, age: float = 0) -> dict[str, str]:
    """The headers of an Events API request, signed the way Slack signs them."""
    timestamp = str(int(time.time() - age))
    base = b"v0:" + timestamp.encode() + b":" + body
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature,
    }
