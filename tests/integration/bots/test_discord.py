"""The Discord bot end to end: discord.py, unmodified, against a fake Discord gateway and
REST API; behind it the real gateway and model."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import discord.http as discord_http
import pytest
from discord import Client as DiscordClient
from discord import Intents, Interaction

from tertulia.bots.adapter import HELP_TEXT, RESET_DONE, STILL_WAITING, UNAVAILABLE
from tertulia.bots.discord import InteractionReply, MessageReply
from tertulia.bots.split import split_message
from tests.fakes import discord
from tests.fakes.platform import SentMessage
from tests.integration.bots.conftest import Gateway
from tests.testbed.process import ManagedProcess, eventually
from tests.testbed.servers import start_bot

CONVERSATION = f"discord:{discord.CHANNEL_ID}:main"


def new_user() -> str:
    return str(random.randint(10**17, 10**18 - 1))


def settings_for(fake: discord.FakeDiscord) -> dict[str, str]:
    return {
        "API_URL": f"{fake.base_url}/api/v10",
        "DISCORD_GATEWAY_URL": f"ws://127.0.0.1:{fake.port}/gw",
    }


@pytest.fixture(scope="module")
def fake_discord() -> Iterator[discord.FakeDiscord]:
    with discord.FakeDiscord() as fake:
        yield fake


@pytest.fixture(scope="module")
def discord_bot(
    tmp_path_factory: pytest.TempPathFactory,
    fake_discord: discord.FakeDiscord,
    gateway: Gateway,
) -> Iterator[ManagedProcess]:
    settings = gateway.bot_settings() | settings_for(fake_discord) | {"MESSAGE_LIMIT": "300"}
    process, _ = start_bot(
        "discord", tmp_path_factory.mktemp("discord"), settings, {"token": discord.TOKEN}
    )
    yield process
    process.stop()


def answered(
    fake: discord.FakeDiscord, gateway: Gateway, channel: str, author: str, turns: int = 1
) -> tuple[str, list[SentMessage]]:
    """The gateway's latest answer once the bot's messages in `channel` hold all of it."""
    conversation = f"discord:{channel}:main", f"discord:{author}"
    eventually(
        lambda: (
            len([t for t in gateway.conversation(*conversation) or [] if t["role"] == "assistant"])
            >= turns
        ),
        timeout=120,
        what="the gateway's answer",
    )
    answer = gateway.last_answer(*conversation)
    assert answer is not None
    expected = split_message(answer, 300)
    messages = eventually(
        lambda: (
            [m.text for m in fake.sent(channel)][-len(expected) :] == expected
            and fake.sent(channel)
        ),
        timeout=30,
        what="the answer in Discord",
    )
    return answer, messages[-len(expected) :]


def test_mention_gets_a_reply_streamed_by_edits_and_split_under_the_limit(
    fake_discord: discord.FakeDiscord, discord_bot: ManagedProcess, gateway: Gateway
) -> None:
    author = new_user()
    before = len(fake_discord.sent(discord.CHANNEL_ID))
    fake_discord.post_message("just chatting", author=author)
    message = fake_discord.post_message(
        "Tell me a very long story about the sea.", author=author, mention_bot=True
    )
    answer, pieces = answered(fake_discord, gateway, discord.CHANNEL_ID, author)
    assert len(answer) > 300, "the model's answer was too short to need splitting"
    assert len(pieces) >= 2 and len(fake_discord.sent(discord.CHANNEL_ID)) == before + len(pieces)
    assert all(len(piece.text) <= 300 for piece in pieces)
    assert pieces[0].extra["reply_to"] == message["id"]
    assert any(len(piece.versions) > 1 for piece in pieces), "the answer was not streamed"
    assert discord.CHANNEL_ID in fake_discord.typing
    turns = gateway.conversation(CONVERSATION, f"discord:{author}")
    assert turns[0]["content"] == "Tell me a very long story about the sea."


def test_direct_message_is_answered_and_bots_are_not(
    fake_discord: discord.FakeDiscord, discord_bot: ManagedProcess, gateway: Gateway
) -> None:
    author = new_user()
    fake_discord.post_message("hello", author=discord.BOT_ID, bot=True, direct=True)
    fake_discord.post_message("beep", author=new_user(), bot=True, mention_bot=True)
    message = fake_discord.post_message("Hello there!", author=author, direct=True)
    _, pieces = answered(fake_discord, gateway, message["channel_id"], author)
    assert pieces[0].extra["reply_to"] == message["id"]
    assert len(fake_discord.sent(message["channel_id"])) == len(pieces)
    assert (
        gateway.conversation(f"discord:13{discord.BOT_ID[2:]}:main", f"discord:{discord.BOT_ID}")
        is None
    )


def test_redelivered_message_gets_one_reply(
    fake_discord: discord.FakeDiscord, discord_bot: ManagedProcess, gateway: Gateway
) -> None:
    author = new_user()
    first = fake_discord.post_message("Hi!", author=author, direct=True)
    fake_discord.post_message("Hi!", author=author, direct=True, message_id=first["id"])
    _, pieces = answered(fake_discord, gateway, first["channel_id"], author)
    fake_discord.post_message("Again?", author=author, direct=True)
    _, later = answered(fake_discord, gateway, first["channel_id"], author, turns=2)
    assert len(fake_discord.sent(first["channel_id"])) == len(pieces) + len(later)


def test_slash_commands_ask_reset_and_help(
    fake_discord: discord.FakeDiscord, discord_bot: ManagedProcess, gateway: Gateway
) -> None:
    assert {c["name"] for c in fake_discord.commands} == {"ask", "reset", "help"}
    author = new_user()
    fake_discord.run_command("ask", author, question="What is the sea?")
    _answer, _ = answered(fake_discord, gateway, discord.CHANNEL_ID, author)
    assert any(c.get("type") == 5 for c in fake_discord.interaction_callbacks)
    assert gateway.conversation(CONVERSATION, f"discord:{author}")
    fake_discord.run_command("reset", author)
    eventually(lambda: fake_discord.sent(discord.CHANNEL_ID)[-1].text == RESET_DONE, timeout=30)
    assert gateway.conversation(CONVERSATION, f"discord:{author}") is None
    fake_discord.post_message("help", author=author, mention_bot=True)
    eventually(
        lambda: any(embed.get("description") == HELP_TEXT for embed in fake_discord.embeds),
        timeout=30,
        what="help as an embed",
    )


def test_it_asks_for_no_privileged_intent_and_still_reads_its_mentions(
    fake_discord: discord.FakeDiscord, discord_bot: ManagedProcess, gateway: Gateway
) -> None:
    # The fake grants none, as a fresh application in the developer portal: asking for one
    # would have closed the session with 4014.
    assert fake_discord.granted_intents == 0 and fake_discord.identified >= 1
    author = new_user()
    fake_discord.post_message("Is the tide high?", author=author, mention_bot=True)
    answered(fake_discord, gateway, discord.CHANNEL_ID, author)
    turns = gateway.conversation(CONVERSATION, f"discord:{author}")
    assert turns and turns[0]["content"] == "Is the tide high?"


def test_slash_commands_are_registered_again_only_when_they_changed(
    tmp_path: Path,
    fake_discord: discord.FakeDiscord,
    discord_bot: ManagedProcess,
    gateway: Gateway,
) -> None:
    route = f"PUT applications/{discord.APPLICATION_ID}/commands"
    assert len(fake_discord.called(route)) == 1
    settings = gateway.bot_settings() | settings_for(fake_discord)

    def restart(name: str) -> None:
        identified = fake_discord.identified
        process, _ = start_bot("discord", tmp_path, settings, {"token": discord.TOKEN}, name=name)
        try:
            eventually(lambda: fake_discord.identified > identified, timeout=60)
        finally:
            process.stop()

    restart("same-commands")
    assert len(fake_discord.called(route)) == 1
    # What an older release registered: a description since changed.
    fake_discord.commands[0] = {**fake_discord.commands[0], "description": "An old text."}
    restart("changed-commands")
    assert len(fake_discord.called(route)) == 2
    assert "An old text." not in {command["description"] for command in fake_discord.commands}


def test_rate_limited_send_is_waited_out_and_retried(
    fake_discord: discord.FakeDiscord, discord_bot: ManagedProcess, gateway: Gateway
) -> None:
    author = new_user()
    fake_discord.rate_limit_next("POST channels/{id}/messages", retry_after=2)
    message = fake_discord.post_message("Hello?", author=author, direct=True)
    answered(fake_discord, gateway, message["channel_id"], author)
    [(_, limited_at)] = [
        c for c in fake_discord.rate_limited if c[0] == "POST channels/{id}/messages"
    ]
    retried = [
        at
        for at in fake_discord.called(f"POST channels/{message['channel_id']}/messages")
        if at > limited_at
    ]
    assert retried and retried[0] - limited_at >= 1.9


def test_reconnects_after_the_gateway_drops_the_connection(
    fake_discord: discord.FakeDiscord, discord_bot: ManagedProcess, gateway: Gateway
) -> None:
    identified = fake_discord.identified
    fake_discord.drop_connections()
    eventually(
        lambda: fake_discord.identified > identified and fake_discord.connected(), timeout=60
    )
    author = new_user()
    message = fake_discord.post_message("Still there?", author=author, direct=True)
    answered(fake_discord, gateway, message["channel_id"], author)


def test_gateway_outage_gets_a_friendly_message(
    tmp_path, gateway: Gateway, unreachable_gateway_url: str
) -> None:
    with discord.FakeDiscord() as fake:
        settings = (
            gateway.bot_settings() | settings_for(fake) | {"GATEWAY_URL": unreachable_gateway_url}
        )
        process, _ = start_bot(
            "discord", tmp_path, settings, {"token": discord.TOKEN}, name="discord-outage"
        )
        try:
            eventually(fake.connected, timeout=30)
            fake.post_message("Anyone?", author=new_user(), mention_bot=True)
            eventually(lambda: [m.text for m in fake.sent()] == [UNAVAILABLE], timeout=60)
        finally:
            process.stop()


def drive(fake: discord.FakeDiscord, steps: Callable[[DiscordClient], Awaitable[None]]) -> None:
    """Our reply classes driven directly: the REST calls are discord.py's own, logged in to
    the fake with the bot's token, no gateway connection."""

    async def run() -> None:
        client = DiscordClient(intents=Intents.none())
        await client.login(discord.TOKEN)
        try:
            await steps(client)
        finally:
            await client.close()

    asyncio.run(run())


def test_the_still_waiting_notice_is_a_message_of_its_own_before_the_reply(
    fake_discord: discord.FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord_http.Route, "BASE", f"{fake_discord.base_url}/api/v10")
    asked = fake_discord.message_payload("Tell me everything.", author=new_user(), direct=True)

    async def answer_slowly(client: DiscordClient) -> None:
        channel = client.get_partial_messageable(int(asked["channel_id"]))
        message = client._connection.create_message(channel=channel, data=asked)
        reply = MessageReply(message, 300)
        await reply.notice(STILL_WAITING)
        await reply.finish(0, "The answer.")

    drive(fake_discord, answer_slowly)
    notice, answer = fake_discord.sent(asked["channel_id"])
    assert notice.text == STILL_WAITING and notice.extra["reply_to"] is None
    assert answer.text == "The answer." and answer.extra["reply_to"] == asked["id"]


def test_a_slash_command_s_notice_is_seen_by_the_asker_alone(
    fake_discord: discord.FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord_http.Route, "BASE", f"{fake_discord.base_url}/api/v10")
    channel = fake_discord.snowflake()
    payload = fake_discord.interaction_payload(
        "ask", fake_discord.snowflake(), new_user(), channel, question="Tell me everything."
    )

    async def answer_slowly(client: DiscordClient) -> None:
        interaction: Interaction[DiscordClient] = Interaction(
            data=payload,
            state=client._connection,
        )
        await interaction.response.defer(thinking=True)
        reply = InteractionReply(interaction, 300)
        await reply.notice(STILL_WAITING)
        await reply.finish(0, "The answer.")

    drive(fake_discord, answer_slowly)
    notice, answer = fake_discord.sent(channel)
    assert notice.text == STILL_WAITING and notice.extra["flags"] & 64  # ephemeral
    # The answer is the deferred response itself, edited: not one more message.
    assert answer.text == "The answer." and answer.id == f"original-{payload['token']}"
