"""Discord with discord.py: mentions and direct messages, `/ask` and `/reset` commands.

Needs no privileged intent: Discord delivers the content of messages that mention the bot and
of direct messages without the message-content intent, and those are all the bot answers.
Answers reply to the message and are streamed by editing that reply; `/ask` streams into the
command's response. Help is an embed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord
import yarl
from discord import app_commands

from tertulia.bots.adapter import HELP_TEXT, IncomingMessage, Reply
from tertulia.bots.runtime import BotRuntime

logger = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
_NO_MENTIONS = discord.AllowedMentions.none()


class MessageReply(Reply):
    """Pieces as replies in the message's channel, each edited while it streams."""

    def __init__(self, message: discord.Message, limit: int) -> None:
        self.message = message
        self.limit = limit
        self.sent: dict[int, discord.Message] = {}

    async def typing(self) -> None:
        await self.message.channel.typing()

    async def show(self, index: int, text: str) -> None:
        await self._write(index, text)

    async def finish(self, index: int, text: str) -> None:
        await self._write(index, text)

    async def notice(self, text: str) -> None:
        await self.message.channel.send(text, allowed_mentions=_NO_MENTIONS)

    async def say_help(self, text: str) -> None:
        await self.message.reply(embed=help_embed(text), mention_author=False)

    async def _write(self, index: int, text: str) -> None:
        if index in self.sent:
            if self.sent[index].content != text:
                self.sent[index] = await self.sent[index].edit(content=text)
        elif index == 0:
            self.sent[index] = await self.message.reply(
                text, mention_author=False, allowed_mentions=_NO_MENTIONS
            )
        else:
            self.sent[index] = await self.message.channel.send(text, allowed_mentions=_NO_MENTIONS)


class InteractionReply(Reply):
    """Pieces of a slash command's answer: the deferred response, then follow-ups."""

    def __init__(self, interaction: discord.Interaction, limit: int) -> None:
        self.interaction = interaction
        self.limit = limit
        self.followups: dict[int, discord.WebhookMessage] = {}

    async def typing(self) -> None:
        return None  # the deferred response already shows "thinking"

    async def show(self, index: int, text: str) -> None:
        await self._write(index, text)

    async def finish(self, index: int, text: str) -> None:
        await self._write(index, text)

    async def notice(self, text: str) -> None:
        # Only the asker sees it, beside the deferred response's own "thinking".
        await self.interaction.followup.send(text, ephemeral=True, allowed_mentions=_NO_MENTIONS)

    async def say_help(self, text: str) -> None:
        await self.interaction.edit_original_response(embed=help_embed(text))

    async def _write(self, index: int, text: str) -> None:
        if index == 0:
            await self.interaction.edit_original_response(
                content=text, allowed_mentions=_NO_MENTIONS
            )
        elif index in self.followups:
            await self.followups[index].edit(content=text)
        else:
            self.followups[index] = await self.interaction.followup.send(
                text, wait=True, allowed_mentions=_NO_MENTIONS
            )


async def commands_changed(tree: app_commands.CommandTree[discord.Client]) -> bool:
    """Whether the tree's global commands differ from those registered with Discord."""
    registered = await tree.fetch_commands()
    ours = [command.to_dict(tree) for command in tree.get_commands()]
    return _signature(ours) != _signature([command.to_dict() for command in registered])


def _signature(commands: list[Any]) -> list[tuple[Any, ...]]:
    """What a user sees of each command: its name, description and options."""
    return sorted(
        (
            command["name"],
            command.get("description", ""),
            command.get("type", 1),
            tuple(
                (
                    option["name"],
                    option.get("description", ""),
                    option["type"],
                    bool(option.get("required")),
                )
                for option in command.get("options") or []
            ),
        )
        for command in commands
    )


def help_embed(text: str) -> discord.Embed:
    return discord.Embed(title="Tertulia", description=text, colour=discord.Colour.blurple())


def incoming(message: discord.Message, bot_user: discord.ClientUser) -> IncomingMessage:
    return IncomingMessage(
        platform="discord",
        channel=str(message.channel.id),
        user=str(message.author.id),
        text=message.content,
        direct=isinstance(message.channel, discord.DMChannel),
        mentions_bot=bot_user in message.mentions,
        from_bot=message.author.bot,
        event_id=str(message.id),
        mention_markup=(f"<@{bot_user.id}>", f"<@!{bot_user.id}>"),
    )


def command_message(interaction: discord.Interaction, text: str) -> IncomingMessage:
    return IncomingMessage(
        platform="discord",
        channel=str(interaction.channel_id),
        user=str(interaction.user.id),
        text=text,
        direct=True,  # a slash command is addressed to the bot
        event_id=str(interaction.id),
    )


class TertuliaClient(discord.Client):
    def __init__(self, runtime: BotRuntime) -> None:
        # The default intents hold no privileged one: nothing to switch on in the portal,
        # where a missing toggle would close the connection (4014) and crash-loop the pod.
        super().__init__(intents=discord.Intents.default(), allowed_mentions=_NO_MENTIONS)
        self.runtime = runtime
        self.limit = runtime.settings.limit(MESSAGE_LIMIT)
        self.tree = app_commands.CommandTree(self)
        self._register_commands()

    def _register_commands(self) -> None:
        adapter = self.runtime.adapter

        @self.tree.command(name="ask", description="Ask the assistant a question.")
        @app_commands.describe(question="Your question")
        async def ask(interaction: discord.Interaction, question: str) -> None:
            await interaction.response.defer(thinking=True)
            await adapter.handle(command_message(interaction, question), self._reply(interaction))

        @self.tree.command(name="reset", description="Forget this channel's conversation.")
        async def reset(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await adapter.handle(command_message(interaction, "reset"), self._reply(interaction))

        @self.tree.command(name="help", description="What the assistant can do.")
        async def help_command(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(embed=help_embed(HELP_TEXT), ephemeral=True)

    def _reply(self, interaction: discord.Interaction) -> InteractionReply:
        return InteractionReply(interaction, self.limit)

    async def setup_hook(self) -> None:
        # Registers /ask, /reset and /help globally, only when they differ from what Discord
        # holds: each sync counts against a daily limit, and every restart would spend one.
        if await commands_changed(self.tree):
            await self.tree.sync()
            logger.info("registered the slash commands")

    async def on_ready(self) -> None:
        self.runtime.connected = True
        logger.info("connected to Discord", extra={"bot_user_id": self.user and self.user.id})

    async def on_disconnect(self) -> None:
        self.runtime.connected = False

    async def on_resumed(self) -> None:
        self.runtime.connected = True

    async def on_message(self, message: discord.Message) -> None:
        if self.user is None:
            return
        await self.runtime.adapter.handle(
            incoming(message, self.user), MessageReply(message, self.limit)
        )


async def serve(runtime: BotRuntime) -> None:
    settings = runtime.settings
    if settings.api_url:
        discord.http.Route.BASE = settings.api_url.rstrip("/")
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)
    client = TertuliaClient(runtime)
    try:
        # reconnect=True: dropped connections are resumed or re-identified with back-off.
        await client.start(settings.secret("token"), reconnect=True)
    finally:
        if not client.is_closed():
            await client.close()
        await asyncio.sleep(0)
