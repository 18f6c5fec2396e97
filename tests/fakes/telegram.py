"""A fake Telegram Bot API: `POST /bot<TOKEN>/<method>` with form or JSON bodies, answered
`{"ok": true, "result": ...}` or `{"ok": false, "error_code": ..., "description": ...}`, long
polling with `getUpdates`, and webhook deliveries with the secret-token header.

Like Telegram, it checks what a bot sends: at most 4,096 characters after entity parsing, and
HTML markup that it can parse, or a 400 "can't parse entities".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from html.parser import HTMLParser
from typing import Any

import httpx
from aiohttp import web

from tests.fakes.platform import FakePlatform, SentMessage

TOKEN = "7000000001:AAFakeTelegramTokenForTheTestBed000000"
BOT = {
    "id": 7000000001,
    "is_bot": True,
    "first_name": "Tertulia",
    "username": "tertulia_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
MESSAGE_LIMIT = 4096
_ALLOWED_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "code",
    "pre",
    "a",
    "span",
    "tg-spoiler",
    "blockquote",
    "tg-emoji",
}


class _EntityParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag not in _ALLOWED_TAGS:
            raise ValueError(f'Unsupported start tag "{tag}"')
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            raise ValueError(f'Unmatched end tag "{tag}"')

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def visible_text(text: str, parse_mode: str | None) -> str:
    """The text a user sees; ValueError when Telegram could not parse the markup."""
    if (parse_mode or "").upper() != "HTML":
        return text
    parser = _EntityParser()
    parser.feed(text)
    parser.close()
    if parser.open:
        raise ValueError(f'Can\'t find end tag corresponding to start tag "{parser.open[-1]}"')
    return "".join(parser.text)


class FakeTelegram(FakePlatform):
    def __init__(self) -> None:
        super().__init__()
        self.updates: list[dict[str, Any]] = []
        self.drafts: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.webhook: dict[str, Any] = {}
        self.refuse_html = False
        # Forum supergroups and their topics; any other thread id on a send is refused.
        self.forum_topics: dict[int, set[int]] = {}
        # Each fake counts from its own start, as each bot's updates do on Telegram.
        self._update_ids = itertools.count(random.randint(1, 10**8) * 1000)
        self._message_ids = itertools.count(1)
        self._new_update: asyncio.Condition | None = None

    def build_app(self) -> web.Application:
        self._new_update = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._api)
        return app

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.record_call(method)
        if request.match_info["token"] != TOKEN:
            return _error(401, "Unauthorized")
        body = await _params(request)
        retry_after = self.take_rate_limit(method)
        if retry_after is not None:
            return _error(
                429,
                f"Too Many Requests: retry after {int(retry_after)}",
                parameters={"retry_after": int(retry_after)},
            )
        handler = getattr(self, "api_" + method, None)
        if handler is None:
            return _error(404, "Not Found: method not found")
        try:
            result = await handler(body)
        except ValueError as error:
            return _error(400, f"Bad Request: {error}")
        return web.json_response({"ok": True, "result": result})

    # -- methods ---------------------------------------------------------------------------
    async def api_getMe(self, _: dict[str, Any]) -> dict[str, Any]:
        return BOT

    async def api_deleteWebhook(self, _: dict[str, Any]) -> bool:
        self.webhook = {}
        return True

    async def api_setWebhook(self, body: dict[str, Any]) -> bool:
        self.webhook = {"url": body["url"], "secret_token": body.get("secret_token")}
        return True

    async def api_getUpdates(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook:
            raise ValueError("Conflict: can't use getUpdates method while webhook is active")
        offset = int(body.get("offset") or 0)
        timeout = float(body.get("timeout") or 0)
        assert self._new_update is not None
        async with self._new_update:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
            if not self.updates and timeout:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_update.wait(), timeout)
            return list(self.updates)

    async def api_sendChatAction(self, body: dict[str, Any]) -> bool:
        self._check_thread(body)
        self.actions.append(body)
        return True

    def _check_thread(self, body: dict[str, Any]) -> None:
        """A message_thread_id names a forum topic; a reply chain's thread, or any thread of
        a group that is not a forum, is refused as Telegram does."""
        thread = body.get("message_thread_id")
        if thread and int(thread) not in self.forum_topics.get(int(body["chat_id"]), set()):
            raise ValueError("message thread not found")

    async def api_sendMessageDraft(self, body: dict[str, Any]) -> bool:
        if int(body["chat_id"]) < 0:
            raise ValueError("message drafts can be sent only to private chats")
        if not int(body.get("draft_id") or 0):
            raise ValueError("draft_id must be non-zero")
        self._check(str(body.get("text") or ""), body.get("parse_mode"))
        self.drafts.append(body)
        return True

    def _check(self, text: str, parse_mode: str | None) -> None:
        if parse_mode and self.refuse_html:
            raise ValueError('can\'t parse entities: Unsupported start tag "pre" at byte offset 0')
        try:
            shown = visible_text(text, parse_mode)
        except ValueError as error:
            raise ValueError(f"can't parse entities: {error}") from None
        if not shown.strip():
            raise ValueError("message text is empty")
        if len(shown) > MESSAGE_LIMIT:
            raise ValueError("message is too long")

    async def api_sendMessage(self, body: dict[str, Any]) -> dict[str, Any]:
        text, parse_mode = str(body.get("text") or ""), body.get("parse_mode")
        self._check(text, parse_mode)
        self._check_thread(body)
        chat_id = int(body["chat_id"])
        message_id = next(self._message_ids)
        reply = body.get("reply_parameters") or {}
        sent = SentMessage(
            str(chat_id),
            str(message_id),
            visible_text(text, parse_mode),
            thread=str(body["message_thread_id"]) if body.get("message_thread_id") else None,
            extra={"parse_mode": parse_mode, "reply_to": reply.get("message_id"), "raw": text},
        )
        self.add_message(sent)
        return self._message_json(chat_id, message_id, sent.text)

    async def api_editMessageText(self, body: dict[str, Any]) -> dict[str, Any]:
        text, parse_mode = str(body.get("text") or ""), body.get("parse_mode")
        self._check(text, parse_mode)
        message = next((m for m in self.sent() if m.id == str(body["message_id"])), None)
        if message is None:
            raise ValueError("message to edit not found")
        shown = visible_text(text, parse_mode)
        if shown == message.text and parse_mode == message.extra.get("parse_mode"):
            raise ValueError(
                "message is not modified: specified new message content and reply markup "
                "are exactly the same as a current content and reply markup of the message"
            )
        self.edit_message(message.id, shown)
        message.extra.update(parse_mode=parse_mode, raw=text)
        return self._message_json(int(body["chat_id"]), int(message.id), shown)

    @staticmethod
    def _message_json(chat_id: int, message_id: int, text: str) -> dict[str, Any]:
        return {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": _chat(chat_id),
            "from": BOT,
            "text": text,
        }

    # -- what users do ---------------------------------------------------------------------
    def text_update(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        *,
        is_bot: bool = False,
        reply_to_bot: bool = False,
        topic: int | None = None,
    ) -> dict[str, Any]:
        """An update with a text message, with `bot_command` and `mention` entities as
        Telegram sets them. A reply carries its chain's thread id, as in any supergroup; a
        message in a forum's `topic` carries the topic's, marked as a topic message."""
        entities = []
        if text.startswith("/"):
            entities.append({"type": "bot_command", "offset": 0, "length": len(text.split()[0])})
        mention = "@" + str(BOT["username"])
        if mention in text:
            entities.append(
                {"type": "mention", "offset": text.index(mention), "length": len(mention)}
            )
        if topic is not None:
            self.forum_topics.setdefault(chat_id, set()).add(topic)
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": _chat(chat_id, forum=chat_id in self.forum_topics),
            "from": {"id": user_id, "is_bot": is_bot, "first_name": f"User {user_id}"},
            "text": text,
        }
        if entities:
            message["entities"] = entities
        if reply_to_bot:
            message["reply_to_message"] = self._message_json(chat_id, 1, "an earlier answer")
            if chat_id < 0:
                message["message_thread_id"] = 1  # the chain's first message
        if topic is not None:
            message["message_thread_id"] = topic
            message["is_topic_message"] = True
        return {"update_id": next(self._update_ids), "message": message}

    def push_update(self, update: dict[str, Any]) -> None:
        """Queue an update for the bot's next getUpdates."""

        async def push() -> None:
            assert self._new_update is not None
            async with self._new_update:
                self.updates.append(update)
                self._new_update.notify_all()

        self.call(push())

    def post_webhook(self, url: str, update: dict[str, Any], secret: str | None) -> int:
        """Deliver an update to the bot's webhook as Telegram does; returns the status."""
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
        return httpx.post(url, json=update, headers=headers, timeout=10).status_code


def _chat(chat_id: int, *, forum: bool = False) -> dict[str, Any]:
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": f"User {chat_id}"}
    chat: dict[str, Any] = {"id": chat_id, "type": "supergroup", "title": f"Group {chat_id}"}
    if forum:
        chat["is_forum"] = True
    return chat


def _error(status: int, description: str, **extra: Any) -> web.Response:
    body = {"ok": False, "error_code": status, "description": description, **extra}
    return web.json_response(body, status=status)


async def _params(request: web.Request) -> dict[str, Any]:
    """The method's parameters: a JSON body, or a form whose non-string values are JSON."""
    if request.content_type == "application/json":
        return dict(await request.json())
    params: dict[str, Any] = {}
    for key, value in (await request.post()).items():
        text = str(value)
        params[key] = json.loads(text) if text[:1] in "{[" else text
    return params
