"""The Slack bot end to end: slack_bolt, unmodified, against a fake Slack that speaks the Web
API, Socket Mode and signed Events API requests; behind it the real gateway and model."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from tertulia.bots.adapter import HELP_TEXT, RESET_DONE, STILL_WAITING, UNAVAILABLE
from tertulia.bots.slack import MESSAGE_LIMIT, UPDATES_PER_MINUTE, MethodBudget, SlackReply
from tests.fakes import slack
from tests.fakes.platform import SentMessage
from tests.integration.bots.conftest import Gateway
from tests.testbed.process import ManagedProcess, eventually, free_port
from tests.testbed.servers import start_bot

SECRETS = {
    "bot-token": slack.BOT_TOKEN,
    "app-token": slack.APP_TOKEN,
    "signing-secret": slack.SIGNING_SECRET,
}


def new_ts() -> str:
    return f"{int(time.time())}.{uuid.uuid4().int % 1_000_000:06d}"


def new_channel(prefix: str = "C") -> str:
    return prefix + uuid.uuid4().hex[:9].upper()


@pytest.fixture(scope="module")
def fake_slack() -> Iterator[slack.FakeSlack]:
    with slack.FakeSlack() as fake:
        yield fake


@pytest.fixture(scope="module")
def socket_bot(
    tmp_path_factory: pytest.TempPathFactory,
    fake_slack: slack.FakeSlack,
    gateway: Gateway,
) -> Iterator[tuple[ManagedProcess, str]]:
    settings = gateway.bot_settings() | {
        "MODE": "socket",
        "API_URL": f"{fake_slack.base_url}/api/",
    }
    process, health = start_bot("slack", tmp_path_factory.mktemp("slack"), settings, SECRETS)
    yield process, health
    process.stop()


def start_events_bot(workdir, fake: slack.FakeSlack, settings: dict[str, str], name: str):
    port = free_port()
    process, health = start_bot(
        "slack",
        workdir,
        settings
        | {
            "MODE": "events",
            "API_URL": f"{fake.base_url}/api/",
            "WEBHOOK_HOST": "127.0.0.1",
            "WEBHOOK_PORT": str(port),
        },
        SECRETS,
        name=name,
    )
    return process, f"http://127.0.0.1:{port}/slack/events", health


def post_event(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    raw = json.dumps(body).encode()
    return httpx.post(url, content=raw, headers=slack.signed_headers(raw) | headers, timeout=10)


def finished_reply(fake: slack.FakeSlack, channel: str, thread: str) -> SentMessage:
    """The bot's reply in `thread`, once its stream has stopped."""
    reply: SentMessage = eventually(
        lambda: next(
            (m for m in fake.sent(channel) if m.thread == thread and not m.extra.get("streaming")),
            None,
        ),
        timeout=120,
        what=f"a finished reply in {channel} thread {thread}",
    )
    return reply


def test_mention_is_answered_in_its_thread_streamed_and_remembered(
    fake_slack: slack.FakeSlack, socket_bot: tuple[ManagedProcess, str], gateway: Gateway
) -> None:
    channel, ts = new_channel(), new_ts()
    envelope = fake_slack.send_envelope(
        slack.event_body(slack.mention(channel, "U0ALICE", "Tell me about the sea.", ts))
    )
    reply = finished_reply(fake_slack, channel, ts)
    assert envelope in fake_slack.acks
    assert fake_slack.called("chat.startStream"), "native streaming was not used"
    assert any(status["thread_ts"] == ts for status in fake_slack.statuses)
    answer = gateway.last_answer(f"slack:{channel}:{ts}", "slack:U0ALICE")
    # Trailing whitespace is dropped, as Slack drops it.
    assert answer and reply.text == answer.rstrip()
    # The gateway saw the question without the bot's mention.
    turns = gateway.conversation(f"slack:{channel}:{ts}", "slack:U0ALICE")
    assert turns[0]["content"] == "Tell me about the sea."


def test_redelivered_event_gets_one_reply(
    fake_slack: slack.FakeSlack, socket_bot: tuple[ManagedProcess, str]
) -> None:
    channel, ts = new_channel(), new_ts()
    received = received_count(socket_bot[1])
    body = slack.event_body(slack.mention(channel, "U0BOB", "Hello there.", ts))
    fake_slack.send_envelope(body)
    fake_slack.send_envelope(body, retry_attempt=1)
    fake_slack.send_envelope(body, retry_attempt=2)
    finished_reply(fake_slack, channel, ts)
    # A later message in the same channel is answered: the redeliveries were processed by now.
    later = new_ts()
    fake_slack.send_envelope(slack.event_body(slack.mention(channel, "U0BOB", "And now?", later)))
    finished_reply(fake_slack, channel, later)
    assert len([m for m in fake_slack.sent(channel) if m.thread == ts]) == 1
    assert received_count(socket_bot[1]) == received + 2


def test_own_and_other_bots_messages_get_no_reply(
    fake_slack: slack.FakeSlack, socket_bot: tuple[ManagedProcess, str]
) -> None:
    channel = new_channel("D")
    own, other, human = new_ts(), new_ts(), new_ts()
    fake_slack.send_envelope(
        slack.event_body(
            slack.direct_message(channel, slack.BOT_USER, "I am the bot", own, bot_id=slack.BOT_ID)
        )
    )
    fake_slack.send_envelope(
        slack.event_body(
            slack.direct_message(
                channel, "U0OTHERBOT", "beep", other, bot_id="B0OTHER", subtype="bot_message"
            )
        )
    )
    fake_slack.send_envelope(
        slack.event_body(slack.direct_message(channel, "U0CAROL", "hi", human))
    )
    finished_reply(fake_slack, channel, human)
    assert {m.thread for m in fake_slack.sent(channel)} == {human}


def test_help_and_reset_commands(
    fake_slack: slack.FakeSlack, socket_bot: tuple[ManagedProcess, str], gateway: Gateway
) -> None:
    channel = new_channel("D")
    first = new_ts()
    fake_slack.send_envelope(
        slack.event_body(slack.direct_message(channel, "U0DAVE", "Say something.", first))
    )
    finished_reply(fake_slack, channel, first)
    # Outside a thread, a direct message channel is one conversation.
    assert gateway.conversation(f"slack:{channel}:main", "slack:U0DAVE")
    reset = new_ts()
    fake_slack.send_envelope(
        slack.event_body(slack.direct_message(channel, "U0DAVE", "reset", reset))
    )
    assert finished_reply(fake_slack, channel, reset).text == RESET_DONE
    assert gateway.conversation(f"slack:{channel}:main", "slack:U0DAVE") is None
    asked = new_ts()
    fake_slack.send_envelope(
        slack.event_body(slack.direct_message(channel, "U0DAVE", "help", asked))
    )
    assert finished_reply(fake_slack, channel, asked).text == HELP_TEXT


def test_rate_limited_call_is_waited_out_and_retried(
    fake_slack: slack.FakeSlack, socket_bot: tuple[ManagedProcess, str]
) -> None:
    channel, ts = new_channel(), new_ts()
    fake_slack.rate_limit_next("chat.startStream", retry_after=2)
    fake_slack.send_envelope(slack.event_body(slack.mention(channel, "U0ERIN", "Hi!", ts)))
    reply = finished_reply(fake_slack, channel, ts)
    assert reply.text
    [(_, limited_at)] = [c for c in fake_slack.rate_limited if c[0] == "chat.startStream"]
    retried = [at for at in fake_slack.called("chat.startStream") if at > limited_at]
    assert retried and retried[0] - limited_at >= 1.9


def test_socket_mode_reconnects_after_slack_drops_the_connection(
    fake_slack: slack.FakeSlack, socket_bot: tuple[ManagedProcess, str]
) -> None:
    fake_slack.drop_connections()
    eventually(fake_slack.connected, timeout=60, what="the bot to reconnect")
    channel, ts = new_channel(), new_ts()
    fake_slack.send_envelope(
        slack.event_body(slack.mention(channel, "U0FRANK", "Still there?", ts))
    )
    assert finished_reply(fake_slack, channel, ts).text


def test_events_mode_splits_a_long_answer_with_nothing_lost(
    tmp_path, fake_slack: slack.FakeSlack, gateway: Gateway
) -> None:
    settings = gateway.bot_settings() | {"MESSAGE_LIMIT": "200"}
    process, url, _ = start_events_bot(tmp_path, fake_slack, settings, "slack-events")
    try:
        channel, ts = new_channel(), new_ts()
        body = slack.event_body(
            slack.mention(channel, "U0GINA", "Tell me a very long story about the sea.", ts)
        )
        assert post_event(url, body).status_code == 200
        # Slack's retry of the same event, with its retry headers: acknowledged, not answered.
        assert post_event(url, body, **{"X-Slack-Retry-Num": "1"}).status_code == 200
        answer = eventually(
            lambda: gateway.last_answer(f"slack:{channel}:{ts}", "slack:U0GINA"),
            timeout=120,
            what="the gateway's answer",
        )
        assert len(answer) > 200, "the model's answer was too short to need splitting"

        def all_pieces() -> list[SentMessage] | None:
            pieces = [m for m in fake_slack.sent(channel) if m.thread == ts]
            done = pieces and not any(m.extra.get("streaming") for m in pieces)
            joined = " ".join(m.text for m in pieces).split()
            return pieces if done and len(joined) >= len(answer.split()) else None

        pieces = eventually(all_pieces, timeout=60, what="every piece of the answer")
        assert len(pieces) >= 2
        assert all(len(m.text) <= 200 for m in pieces)
        assert _words(" ".join(m.text for m in pieces)) == _words(answer)
        assert (
            post_event(
                url, body | {"event_id": "EvOTHER"}, **{"X-Slack-Signature": "v0=bad"}
            ).status_code
            == 401
        )
        stale = json.dumps(body).encode()
        assert (
            httpx.post(url, content=stale, headers=slack.signed_headers(stale, age=600)).status_code
            == 401
        )
    finally:
        process.stop()


def test_gateway_outage_gets_a_friendly_message(
    tmp_path,
    fake_slack: slack.FakeSlack,
    gateway: Gateway,
    unreachable_gateway_url: str,
) -> None:
    settings = gateway.bot_settings() | {"GATEWAY_URL": unreachable_gateway_url}
    process, url, _ = start_events_bot(tmp_path, fake_slack, settings, "slack-outage")
    try:
        channel, ts = new_channel(), new_ts()
        post_event(url, slack.event_body(slack.mention(channel, "U0HANK", "Anyone?", ts)))
        assert finished_reply(fake_slack, channel, ts).text == UNAVAILABLE
    finally:
        process.stop()


def test_post_and_update_when_the_workspace_refuses_streaming(
    fake_slack: slack.FakeSlack, socket_bot: tuple[ManagedProcess, str], gateway: Gateway
) -> None:
    fake_slack.streaming_enabled = False
    try:
        channel, ts = new_channel(), new_ts()
        fake_slack.send_envelope(slack.event_body(slack.mention(channel, "U0IVY", "Hello?", ts)))
        answer = eventually(
            lambda: gateway.last_answer(f"slack:{channel}:{ts}", "slack:U0IVY"), timeout=120
        )
        reply = eventually(
            lambda: next((m for m in fake_slack.sent(channel) if m.text == answer.rstrip()), None),
            timeout=30,
            what="the posted and updated answer",
        )
        assert reply.thread == ts
    finally:
        fake_slack.streaming_enabled = True


def received_count(health_url: str) -> float:
    """The bot's count of messages it took in (after dropping redeliveries), from /metrics."""
    metrics = httpx.get(f"{health_url}/metrics", timeout=5).text
    for line in metrics.splitlines():
        if line.startswith('tertulia_bot_messages_received_total{platform="slack"}'):
            return float(line.split()[-1])
    return 0.0


def _words(text: str) -> list[str]:
    """The words of `text`, less the fence markers a split adds around cut code blocks."""
    return [word for word in text.split() if not word.startswith("```")]


def reply_to(fake: slack.FakeSlack, client: Any, budget: MethodBudget, user: str) -> SlackReply:
    """The bot's reply to a fresh mention, driven directly: the Web API calls are the real
    slack_sdk's, against the fake."""
    event = slack.mention(new_channel(), user, "Tell me everything.", new_ts())
    return SlackReply(client, event, slack.TEAM, MESSAGE_LIMIT, budget)


def test_a_streamed_answer_longer_than_one_markdown_text_arrives_whole(
    fake_slack: slack.FakeSlack,
) -> None:
    # Three times what one call of the streaming methods may carry, in one message.
    answer = " ".join(f"word{index}" for index in range(5_000))[: 3 * slack.MARKDOWN_TEXT_LIMIT]

    async def stream() -> SlackReply:
        client = AsyncWebClient(token=slack.BOT_TOKEN, base_url=f"{fake_slack.base_url}/api/")
        reply = reply_to(fake_slack, client, MethodBudget(UPDATES_PER_MINUTE), "U0JOE")
        await reply.show(0, answer[:15_000])
        await reply.finish(0, answer)
        return reply

    reply = asyncio.run(stream())
    [message] = fake_slack.sent(reply.channel)
    assert message.text == answer
    # Streamed natively to its end, not posted again after a refusal.
    assert message.extra.get("streaming") is False


def test_the_still_waiting_notice_is_a_message_of_its_own_in_the_thread(
    fake_slack: slack.FakeSlack,
) -> None:
    async def answer_slowly() -> SlackReply:
        client = AsyncWebClient(token=slack.BOT_TOKEN, base_url=f"{fake_slack.base_url}/api/")
        reply = reply_to(fake_slack, client, MethodBudget(UPDATES_PER_MINUTE), "U0JOE")
        await reply.notice(STILL_WAITING)
        await reply.finish(0, "The answer.")
        return reply

    reply = asyncio.run(answer_slowly())
    notice, answer = fake_slack.sent(reply.channel)
    assert notice.text == STILL_WAITING and answer.text == "The answer."
    assert notice.thread == answer.thread == reply.thread_ts


def test_several_answers_updating_at_once_stay_within_chat_update_s_tier(
    fake_slack: slack.FakeSlack,
) -> None:
    fake_slack.streaming_enabled = False  # the post-and-update path
    answers = 6
    rate_limited_before = len(fake_slack.rate_limited)

    async def stream_all() -> list[SlackReply]:
        client = AsyncWebClient(token=slack.BOT_TOKEN, base_url=f"{fake_slack.base_url}/api/")
        budget = MethodBudget(UPDATES_PER_MINUTE)
        replies = [reply_to(fake_slack, client, budget, f"U0K{index}") for index in range(answers)]

        async def stream(reply: SlackReply) -> None:
            text = ""
            # Each answer previews every 0.3 seconds for 15 seconds: 300 updates wanted,
            # six times what Slack allows in a minute.
            for word in range(50):
                text += f" word{word}"
                await reply.show(0, text.strip())
                await asyncio.sleep(0.3)
            await reply.finish(0, text.strip() + " The end.")

        await asyncio.gather(*(stream(reply) for reply in replies))
        return replies

    try:
        replies = asyncio.run(stream_all())
    finally:
        fake_slack.streaming_enabled = True
    assert fake_slack.rate_limited[rate_limited_before:] == []
    for reply in replies:
        [message] = fake_slack.sent(reply.channel)
        assert message.text.endswith("word49 The end.")
        # The previews that fitted the budget were shown on the way.
        assert len(message.versions) >= 2
