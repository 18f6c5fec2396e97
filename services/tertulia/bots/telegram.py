"""Telegram with python-telegram-bot: long polling or a webhook.

Private chats get every message answered, streamed as a message draft (`sendMessageDraft`)
and then sent; groups only messages that mention the bot, reply to it or are its commands,
streamed by editing the reply. Markdown from the model is sent as Telegram HTML, and as
plain text when Telegram refuses the markup.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from telegram import Message, ReplyParameters, Update
from telegram.constants import ChatAction, ChatType, MessageLimit, ParseMode
from telegram.error import BadRequest
from telegram.ext import AIORateLimiter, Application, ContextTypes, MessageHandler, filters

from tertulia.bots.adapter import IncomingMessage, Reply
from tertulia.bots.runtime import BotRuntime

logger = logging.getLogger(__name__)

TELEGRAM_API = "https://api.telegram.org"
# Retries of a 429, each after the retry_after Telegram sends.
RATE_LIMIT_RETRIES = 5

_FENCE = re.compile(r"```([\w+-]*)\n?(.*?)(?:```|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"(`[^`\n]+`)")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
# *a* or _a_ on one line, not inside a word (snake_case) nor around spaces (2 * 3 * 4).
_ITALIC = re.compile(r"(?<![\w*_])([*_])(?=[^\s*_])([^\n]+?)(?<=[^\s*_])\1(?![\w*_])")


def to_telegram_html(markdown: str) -> str:
    """The model's Markdown as the HTML subset Telegram accepts: code blocks, code, bold,
    italics."""
    parts: list[str] = []
    position = 0
    for match in _FENCE.finditer(markdown):
        parts.append(_inline_html(markdown[position : match.start()]))
        language, code = match.group(1), html.escape(match.group(2).rstrip("\n"), quote=False)
        attribute = f' class="language-{language}"' if language else ""
        parts.append(f"<pre><code{attribute}>{code}</code></pre>")
        position = match.end()
    parts.append(_inline_html(markdown[position:]))
    return "".join(parts)


def _inline_html(text: str) -> str:
    parts: list[str] = []
    # The split keeps the code spans at the odd places; their text is taken as it is.
    for index, part in enumerate(_INLINE_CODE.split(text)):
        escaped = html.escape(part.strip("`") if index % 2 else part, quote=False)
        if index % 2:
            parts.append(f"<code>{escaped}</code>")
        else:
            parts.append(_ITALIC.sub(r"<i>\2</i>", _BOLD.sub(r"<b>\1</b>", escaped)))
    return "".join(parts)


class TelegramReply(Reply):
    def __init__(self, message: Message, limit: int, draft_id: int) -> None:
        self.message = message
        self.limit = limit
        self.private = message.chat.type == ChatType.PRIVATE
        self.draft_id = draft_id
        self.sent: dict[int, Message] = {}
        self.topic = forum_topic(message)

    async def typing(self) -> None:
        await self.message.get_bot().send_chat_action(
            self.message.chat_id,
            ChatAction.TYPING,
            message_thread_id=self.topic,
        )

    async def show(self, index: int, text: str) -> None:
        bot = self.message.get_bot()
        if self.private:
            # A draft is an animated preview that the final sendMessage replaces.
            await bot.send_message_draft(self.message.chat_id, self.draft_id + index, text)
        elif index in self.sent:
            await self.sent[index].edit_text(text)
        else:
            self.sent[index] = await self._send(text, parse_mode=None)

    async def notice(self, text: str) -> None:
        # Markdown, like an answer: shown in italics, not with its underscores.
        await self._send(to_telegram_html(text), parse_mode=ParseMode.HTML)

    async def finish(self, index: int, text: str) -> None:
        formatted = to_telegram_html(text)
        try:
            await self._write(index, formatted, ParseMode.HTML)
        except BadRequest as error:
            if "parse entities" not in error.message.lower():
                raise
            logger.info("Telegram refused the markup; sending plain text")
            await self._write(index, text, None)

    async def _write(self, index: int, text: str, parse_mode: str | None) -> None:
        if index in self.sent:
            try:
                await self.sent[index].edit_text(text, parse_mode=parse_mode)
            except BadRequest as error:
                if "not modified" not in error.message.lower():
                    raise
        else:
            self.sent[index] = await self._send(text, parse_mode=parse_mode)

    async def _send(self, text: str, parse_mode: str | None) -> Message:
        reply_to = None
        if not self.private and not self.sent:
            reply_to = ReplyParameters(self.message.message_id, allow_sending_without_reply=True)
        return await self.message.get_bot().send_message(
            self.message.chat_id,
            text,
            parse_mode=parse_mode,
            message_thread_id=self.topic,
            reply_parameters=reply_to,
        )


def forum_topic(message: Message) -> int | None:
    """The forum topic a message was posted in, where answers must go too. A reply chain in
    an ordinary group also carries a thread id, which Telegram refuses on a send ("message
    thread not found"): only a topic message's counts."""
    return message.message_thread_id if message.is_topic_message else None


def incoming(update: Update, bot_id: int, bot_username: str) -> IncomingMessage | None:
    message = update.effective_message
    if message is None or message.text is None or message.from_user is None:
        return None
    mention = f"@{bot_username}"
    replied_to = message.reply_to_message
    is_command = message.text.startswith("/")
    return IncomingMessage(
        platform="telegram",
        channel=str(message.chat_id),
        thread=str(topic) if (topic := forum_topic(message)) else None,
        user=str(message.from_user.id),
        text=message.text,
        direct=message.chat.type == ChatType.PRIVATE,
        mentions_bot=mention.lower() in message.text.lower()
        or is_command
        or (
            replied_to is not None
            and replied_to.from_user is not None
            and replied_to.from_user.id == bot_id
        ),
        from_bot=message.from_user.is_bot,
        # Update ids count up per bot: the bot's id makes them unique in a shared Redis.
        event_id=f"{bot_id}:{update.update_id}",
        mention_markup=(mention,),
    )


def build_application(runtime: BotRuntime) -> Application[Any, Any, Any, Any, Any, Any]:
    settings = runtime.settings
    api = (settings.api_url or TELEGRAM_API).rstrip("/")
    application = (
        Application.builder()
        .token(settings.secret("token"))
        .base_url(f"{api}/bot")
        .base_file_url(f"{api}/file/bot")
        .rate_limiter(AIORateLimiter(max_retries=RATE_LIMIT_RETRIES))
        .concurrent_updates(True)
        .build()
    )
    limit = settings.limit(MessageLimit.MAX_TEXT_LENGTH)

    async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = incoming(update, context.bot.id, context.bot.username)
        if message is None or update.effective_message is None:
            return
        # Draft ids must be non-zero and unique to the answer; the update id is both.
        reply = TelegramReply(update.effective_message, limit, draft_id=update.update_id * 100 + 1)
        await runtime.adapter.handle(message, reply)

    application.add_handler(MessageHandler(filters.TEXT, on_text))
    return application


async def serve(runtime: BotRuntime) -> None:
    settings = runtime.settings
    application = build_application(runtime)
    async with application:
        await application.start()
        updater = application.updater
        assert updater is not None  # noqa: S101 - the builder always makes one
        if settings.mode == "webhook":
            if not settings.webhook_url:
                raise SystemExit("TERTULIA_BOT_WEBHOOK_URL is required in webhook mode")
            # Without a configured secret, a fresh one per start still keeps strangers out.
            secret = settings.optional_secret("webhook-secret") or secrets.token_urlsafe(32)
            await updater.start_webhook(
                listen=settings.webhook_host,
                port=settings.webhook_port,
                url_path=urlsplit(settings.webhook_url).path.strip("/"),
                webhook_url=settings.webhook_url,
                secret_token=secret,
            )
        else:
            # Network errors are retried by the updater with back-off: a dropped connection heals.
            await updater.start_polling(timeout=10)
        logger.info("connected to Telegram", extra={"username": application.bot.username})
        runtime.connected = True
        try:
            await asyncio.Event().wait()
        finally:
            await updater.stop()
            await application.stop()
