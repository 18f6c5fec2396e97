"""A fake Discord: the REST API a bot calls (`/api/v10/...`) and the gateway WebSocket with
zlib-stream compression: HELLO, IDENTIFY, READY, GUILD_CREATE, heartbeats, then
MESSAGE_CREATE and INTERACTION_CREATE dispatches.

Like Discord, it refuses messages over 2,000 characters (400, code 50035) and answers rate
limits with 429, a JSON `retry_after` and the headers discord.py reads.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypedDict, Unpack

import aiohttp
from aiohttp import web

from tests.fakes.platform import FakePlatform, SentMessage

TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.FakeDc.discord-token-for-the-test-bed"
BOT_ID = "1100000000000000001"
APPLICATION_ID = "1100000000000000002"
GUILD_ID = "1200000000000000001"
# GUILD_MEMBERS, GUILD_PRESENCES and MESSAGE_CONTENT: what the developer portal must grant.
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | (1 << 15)
MESSAGE_CONTENT = 1 << 15
CHANNEL_ID = "1200000000000000002"
MESSAGE_LIMIT = 2000
_ALL_PERMISSIONS = str((1 << 50) - 1)

BOT_USER = {
    "id": BOT_ID,
    "username": "tertulia",
    "discriminator": "0",
    "global_name": "Tertulia",
    "avatar": None,
    "bot": True,
    "flags": 0,
    "public_flags": 0,
}


def user(user_id: str, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": user_id,
        "username": f"user{user_id[-4:]}",
        "discriminator": "0",
        "global_name": None,
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


def _member(person: dict[str, Any] | None = None) -> dict[str, Any]:
    member: dict[str, Any] = {
        "roles": [],
        "joined_at": "2026-01-01T00:00:00+00:00",
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
    }
    if person is not None:
        member["user"] = person
    return member


class MessageOptions(TypedDict, total=False):
    """How a user's message differs from a plain one in #general."""

    bot: bool
    direct: bool
    mention_bot: bool
    message_id: str | None


def _text_channel(channel_id: str) -> dict[str, Any]:
    return {
        "id": channel_id,
        "type": 0,
        "guild_id": GUILD_ID,
        "name": "general",
        "position": 0,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat()


class FakeDiscord(FakePlatform):
    def __init__(self) -> None:
        super().__init__()
        self.identified = 0
        # The privileged intents switched on for the app in the developer portal: none.
        self.granted_intents = 0
        self.commands: list[dict[str, Any]] = []
        self.interaction_callbacks: list[dict[str, Any]] = []
        self.typing: list[str] = []
        self.embeds: list[dict[str, Any]] = []
        self._ids = itertools.count(int(time.time() * 1000) << 22)
        self._sequence = itertools.count(1)
        self._interactions: dict[str, str] = {}
        self._senders: dict[web.WebSocketResponse, Callable[[dict[str, Any]], Awaitable[None]]] = {}
        self._intents: dict[web.WebSocketResponse, int] = {}

    def snowflake(self) -> str:
        return str(next(self._ids))

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/gw", self._gateway)
        app.router.add_get("/gw/", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        return app

    # -- REST ------------------------------------------------------------------------------
    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        route = f"{request.method} {path}"
        self.record_call(route)
        is_webhook = path.startswith(("webhooks/", "interactions/"))
        if not is_webhook and request.headers.get("Authorization") != f"Bot {TOKEN}":
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        body = await request.json() if request.can_read_body else {}
        retry_after = self.take_rate_limit(_route_pattern(route))
        if retry_after is not None:
            return _json(
                {
                    "message": "You are being rate limited.",
                    "retry_after": retry_after,
                    "global": False,
                },
                429,
                {
                    "Retry-After": str(int(retry_after)),
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset-After": str(retry_after),
                    "X-RateLimit-Bucket": "fake-bucket",
                    "X-RateLimit-Scope": "user",
                    # Without Via, discord.py takes a 429 for a Cloudflare ban.
                    "Via": "1.1 google",
                },
            )
        parts = path.split("/")
        if route == "GET users/@me":
            return _json(BOT_USER)
        if route == "GET oauth2/applications/@me":
            return _json(self._application())
        if route == "GET gateway":
            return _json({"url": f"ws://{self.host}:{self.port}/gw"})
        if request.method == "GET" and parts[0] == "applications" and parts[-1] == "commands":
            return _json(self.commands)
        if request.method == "PUT" and parts[0] == "applications" and parts[-1] == "commands":
            self.commands = [
                {
                    **command,
                    "id": self.snowflake(),
                    "application_id": APPLICATION_ID,
                    "version": "1",
                }
                for command in body
            ]
            return _json(self.commands)
        if parts[0] == "channels" and parts[-1] == "typing":
            self.typing.append(parts[1])
            return web.Response(status=204)
        if parts[0] == "channels" and parts[2] == "messages":
            if request.method == "POST":
                return self._create(parts[1], body)
            if request.method == "PATCH":
                return self._edit(parts[3], body)
        if parts[0] == "interactions" and parts[-1] == "callback":
            self.interaction_callbacks.append({"id": parts[1], **body})
            return _json(
                {
                    "interaction": {
                        "id": parts[1],
                        "type": 2,
                        "response_message_loading": body.get("type") == 5,
                        "response_message_ephemeral": bool(
                            (body.get("data") or {}).get("flags", 0) & 64
                        ),
                    },
                    "resource": {"type": body.get("type")},
                }
            )
        if parts[0] == "webhooks":
            token = parts[2]
            if request.method == "PATCH" and parts[-1] == "@original":
                return self._edit(
                    f"original-{token}", body, create_in=self._interaction_channel(token)
                )
            if request.method == "PATCH" and parts[-2] == "messages":
                return self._edit(parts[-1], body)
            if request.method == "POST" and len(parts) == 3:
                return self._create(self._interaction_channel(token), body)
        return _json({"message": "404: Not Found", "code": 0}, 404)

    def _check(self, body: dict[str, Any]) -> web.Response | None:
        content = body.get("content")
        if content is not None and len(content) > MESSAGE_LIMIT:
            return _json(
                {
                    "message": "Invalid Form Body",
                    "code": 50035,
                    "errors": {
                        "content": {
                            "_errors": [
                                {
                                    "code": "BASE_TYPE_MAX_LENGTH",
                                    "message": "Must be 2000 or fewer in length.",
                                }
                            ]
                        }
                    },
                },
                400,
            )
        if not content and not body.get("embeds"):
            return _json({"message": "Cannot send an empty message", "code": 50006}, 400)
        return None

    def _create(self, channel_id: str, body: dict[str, Any]) -> web.Response:
        if error := self._check(body):
            return error
        message_id = self.snowflake()
        reference = (body.get("message_reference") or {}).get("message_id")
        reference = str(reference) if reference is not None else None
        sent = SentMessage(
            channel_id,
            message_id,
            body.get("content") or "",
            extra={"reply_to": reference, "flags": body.get("flags", 0)},
        )
        self._keep_embeds(sent, body)
        self.add_message(sent)
        return _json(self._message_json(sent))

    def _edit(
        self, message_id: str, body: dict[str, Any], create_in: str | None = None
    ) -> web.Response:
        if error := self._check(body):
            return error
        existing = next((m for m in self.sent() if m.id == message_id), None)
        if existing is None and create_in is not None:
            # The deferred response becomes a message with its first edit.
            existing = self.add_message(
                SentMessage(create_in, message_id, body.get("content") or "")
            )
            self._keep_embeds(existing, body)
            return _json(self._message_json(existing))
        if existing is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        if "content" in body:
            self.edit_message(message_id, body["content"] or "")
        self._keep_embeds(existing, body)
        return _json(self._message_json(existing, edited=True))

    def _keep_embeds(self, message: SentMessage, body: dict[str, Any]) -> None:
        if body.get("embeds"):
            message.extra["embeds"] = body["embeds"]
            self.embeds.extend(body["embeds"])

    def _message_json(self, message: SentMessage, *, edited: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": message.id if message.id.isdigit() else self.snowflake(),
            "channel_id": message.channel,
            "author": BOT_USER,
            "content": message.text,
            "timestamp": _now(),
            "edited_timestamp": _now() if edited else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": message.extra.get("embeds", []),
            "pinned": False,
            "type": 19 if message.extra.get("reply_to") else 0,
            "flags": 0,
        }
        if message.channel == CHANNEL_ID:
            payload["guild_id"] = GUILD_ID
        return payload

    def _application(self) -> dict[str, Any]:
        return {
            "id": APPLICATION_ID,
            "name": "Tertulia",
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": user("1100000000000000099"),
            "verify_key": "0" * 64,
            "flags": 1 << 19,  # GATEWAY_MESSAGE_CONTENT
            "summary": "",
            "team": None,
        }

    # -- gateway ---------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        compress = request.query.get("compress") == "zlib-stream"
        deflate = zlib.compressobj()

        async def send(payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            if compress:
                await socket.send_bytes(deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH))
            else:
                await socket.send_str(data.decode())

        self._senders[socket] = send
        await send({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
        async for frame in socket:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            payload = json.loads(frame.data)
            if payload["op"] == 1:
                await send({"op": 11, "d": None, "s": None, "t": None})
            elif payload["op"] in (2, 6):  # IDENTIFY, or RESUME answered by a fresh session
                intents = int((payload.get("d") or {}).get("intents") or 0)
                if intents & PRIVILEGED_INTENTS & ~self.granted_intents:
                    # As Discord closes a session asking for a privileged intent the app was
                    # not granted; discord.py raises PrivilegedIntentsRequired.
                    await socket.close(code=4014, message=b"Disallowed intent(s).")
                    break
                self._intents[socket] = intents
                self.identified += 1
                await send(self._dispatch("READY", self._ready()))
                await send(self._dispatch("GUILD_CREATE", self._guild()))
                self.sockets.append(socket)
        if socket in self.sockets:
            self.sockets.remove(socket)
        self._intents.pop(socket, None)
        return socket

    def _dispatch(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"op": 0, "t": event, "s": next(self._sequence), "d": data}

    def _ready(self) -> dict[str, Any]:
        return {
            "v": 10,
            "user": BOT_USER,
            "guilds": [{"id": GUILD_ID, "unavailable": True}],
            "session_id": secrets.token_hex(16),
            "resume_gateway_url": f"ws://{self.host}:{self.port}/gw",
            "application": {"id": APPLICATION_ID, "flags": 1 << 19},
            "private_channels": [],
            "relationships": [],
        }

    def _guild(self) -> dict[str, Any]:
        return {
            "id": GUILD_ID,
            "name": "Fake Guild",
            "icon": None,
            "owner_id": "1100000000000000099",
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "features": [],
            "mfa_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "system_channel_flags": 0,
            "large": False,
            "unavailable": False,
            "member_count": 2,
            "roles": [
                {
                    "id": GUILD_ID,
                    "name": "@everyone",
                    "color": 0,
                    "hoist": False,
                    "position": 0,
                    "permissions": _ALL_PERMISSIONS,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "channels": [_text_channel(CHANNEL_ID)],
            "members": [_member(BOT_USER)],
            "threads": [],
            "voice_states": [],
            "presences": [],
            "emojis": [],
            "stickers": [],
            "joined_at": "2026-01-01T00:00:00+00:00",
        }

    def _send(self, event: str, data: dict[str, Any]) -> None:
        async def send() -> None:
            live = [socket for socket in self.sockets if not socket.closed]
            payload = data
            if event == "MESSAGE_CREATE":
                payload = _as_seen(data, self._intents.get(live[-1], 0))
            await self._senders[live[-1]](self._dispatch(event, payload))

        self.call(send())

    def post_message(
        self, content: str, *, author: str, **options: Unpack[MessageOptions]
    ) -> dict[str, Any]:
        """A user's message arriving as MESSAGE_CREATE; in #general or in a direct message."""
        message = self.message_payload(content, author=author, **options)
        self._send("MESSAGE_CREATE", message)
        return message

    def message_payload(
        self,
        content: str,
        *,
        author: str,
        bot: bool = False,
        direct: bool = False,
        mention_bot: bool = False,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """A user's message as Discord delivers it, not sent anywhere."""
        person = user(author, bot=bot)
        message: dict[str, Any] = {
            "id": message_id or self.snowflake(),
            "channel_id": f"13{author[2:]}" if direct else CHANNEL_ID,
            "author": person,
            "content": f"<@{BOT_ID}> {content}" if mention_bot else content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [{**BOT_USER, "member": _member()}] if mention_bot else [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        if not direct:
            message["guild_id"] = GUILD_ID
            message["member"] = _member()
        return message

    def run_command(self, name: str, author: str, **options: str) -> str:
        """A slash command as INTERACTION_CREATE; returns the interaction token."""
        command = next(c for c in self.commands if c["name"] == name)
        interaction = self.interaction_payload(name, command["id"], author, CHANNEL_ID, **options)
        self._send("INTERACTION_CREATE", interaction)
        return str(interaction["token"])

    def interaction_payload(
        self, name: str, command_id: str, author: str, channel_id: str, **options: str
    ) -> dict[str, Any]:
        """A slash command's interaction as Discord delivers it, not sent anywhere; its
        responses and follow-ups land in `channel_id`."""
        token = "aW50ZXJhY3Rpb24" + secrets.token_hex(16)
        interaction = {
            "id": self.snowflake(),
            "application_id": APPLICATION_ID,
            "type": 2,
            "data": {
                "id": command_id,
                "name": name,
                "type": 1,
                "options": [{"name": k, "type": 3, "value": v} for k, v in options.items()],
            },
            "guild_id": GUILD_ID,
            "channel_id": channel_id,
            # Discord sends the channel with the permissions the asker has in it.
            "channel": {**_text_channel(channel_id), "permissions": _ALL_PERMISSIONS, "flags": 0},
            "member": {**_member(user(author)), "permissions": _ALL_PERMISSIONS},
            "token": token,
            "version": 1,
            "app_permissions": _ALL_PERMISSIONS,
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": 8 * 1024 * 1024,
            "authorizing_integration_owners": {"0": GUILD_ID},
            "context": 0,
        }
        with self._lock:
            self._interactions[token] = channel_id
        return interaction

    def _interaction_channel(self, token: str) -> str:
        with self._lock:
            return self._interactions.get(token, CHANNEL_ID)

    def drop_connections(self) -> None:
        async def close() -> None:
            await asyncio.gather(*(socket.close(code=4000) for socket in list(self.sockets)))

        self.call(close())


def _as_seen(message: dict[str, Any], intents: int) -> dict[str, Any]:
    """A message as a session without the message-content intent receives it: the content
    is there only in direct messages, messages that mention the bot and the bot's own."""
    if intents & MESSAGE_CONTENT or "guild_id" not in message:
        return message
    if message["author"]["id"] == BOT_ID or any(m["id"] == BOT_ID for m in message["mentions"]):
        return message
    return {**message, "content": "", "embeds": [], "attachments": []}


def _route_pattern(route: str) -> str:
    """`POST channels/123/messages` -> `POST channels/{id}/messages`: rate_limit_next names."""
    method, path = route.split(" ", 1)
    return method + " " + "/".join("{id}" if part.isdigit() else part for part in path.split("/"))


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py reads a body as JSON only when Content-Type is exactly application/json.
    # text= would add "; charset=utf-8", so the body goes as bytes.
    return web.Response(
        body=json.dumps(payload).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
