"""The Telegram bot end to end: python-telegram-bot, unmodified, against a fake Bot API
(long polling and webhooks); behind it the real gateway and model."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest
from telegram import Bot, Message

from tertulia.bots.adapter import HELP_TEXT, RESET_DONE, STILL_WAITING, UNAVAILABLE
from tertulia.bots.split import split_message
from tertulia.bots.telegram import TelegramReply, to_telegram_html
from tests.fakes import telegram
from tests.fakes.platform import SentMessage
from tests.integration.bots.conftest import Gateway
from tests.testbed.process import ManagedProcess, eventually, free_port
from tests.testbed.servers import start_bot

WEBHOOK_SECRET = "fake-webhook-secret"


def new_user() -> int:
    return random.randint(10_000_000, 99_999_999)


def new_group() -> int:
    return -random.randint(1_000_000_000_000, 1_999_999_999_999)


@pytest.fixture(scope="module")
def fake_telegram() -> Iterator[telegram.FakeTelegram]:
    with telegram.FakeTelegram() as fake:
        yield fake


@pytest.fixture(scope="module")
def polling_bot(
    tmp_path_factory: pytest.TempPathFactory,
    fake_telegram: telegram.FakeTelegram,
    gateway: Gateway,
) -> Iterator[ManagedProcess]:
    settings = gateway.bot_settings() | {
        "MODE": "polling",
        "API_URL": fake_telegram.base_url,
    }
    process, _ = start_bot(
        "telegram", tmp_path_factory.mktemp("telegram"), settings, {"token": telegram.TOKEN}
    )
    yield process
    process.stop()


def replies(fake: telegram.FakeTelegram, chat: int, count: int = 1) -> list[SentMessage]:
    sent: list[SentMessage] = eventually(
        lambda: len(fake.sent(str(chat))) >= count and fake.sent(str(chat)),
        timeout=120,
        what=f"{count} message(s) in chat {chat}",
    )
    return sent


def as_shown(markdown: str) -> str:
    return telegram.visible_text(to_telegram_html(markdown), "HTML")


def test_private_message_is_streamed_as_a_draft_then_sent(
    fake_telegram: telegram.FakeTelegram, polling_bot: ManagedProcess, gateway: Gateway
) -> None:
    user = new_user()
    fake_telegram.push_update(fake_telegram.text_update(user, user, "Tell me about the sea."))
    [reply] = replies(fake_telegram, user)
    answer = gateway.last_answer(f"telegram:{user}:main", f"telegram:{user}")
    assert answer and reply.text == as_shown(answer)
    assert reply.extra["parse_mode"] == "HTML"
    drafts = [d for d in fake_telegram.drafts if int(d["chat_id"]) == user]
    assert drafts and answer.startswith(drafts[0]["text"])
    assert any(int(a["chat_id"]) == user and a["action"] == "typing" for a in fake_telegram.actions)


def test_group_answers_only_mentions_replies_and_commands(
    fake_telegram: telegram.FakeTelegram, polling_bot: ManagedProcess, gateway: Gateway
) -> None:
    group, user = new_group(), new_user()
    fake_telegram.push_update(fake_telegram.text_update(group, user, "just chatting"))
    mention = fake_telegram.text_update(group, user, "@tertulia_bot what is a wave?")
    fake_telegram.push_update(mention)
    conversation = f"telegram:{group}:main", f"telegram:{user}"
    answer = eventually(lambda: gateway.last_answer(*conversation), timeout=120)
    # Streamed by editing one reply to the mention, until it holds the whole answer.
    [reply] = eventually(
        lambda: (
            [m.text for m in fake_telegram.sent(str(group))] == [as_shown(answer)]
            and fake_telegram.sent(str(group))
        ),
        timeout=30,
    )
    assert reply.extra["reply_to"] == mention["message"]["message_id"]
    turns = gateway.conversation(*conversation)
    assert [t["content"] for t in turns if t["role"] == "user"] == ["what is a wave?"]
    fake_telegram.push_update(fake_telegram.text_update(group, user, "why?", reply_to_bot=True))
    eventually(lambda: len(gateway.conversation(*conversation)) == 4, timeout=120)
    fake_telegram.push_update(fake_telegram.text_update(group, user, "/help@tertulia_bot"))
    assert replies(fake_telegram, group, 3)[-1].text == as_shown(HELP_TEXT)


def test_a_forum_topic_is_answered_in_its_topic_with_a_memory_of_its_own(
    fake_telegram: telegram.FakeTelegram, polling_bot: ManagedProcess, gateway: Gateway
) -> None:
    group, user, topic = new_group(), new_user(), random.randint(2, 10_000)
    fake_telegram.push_update(
        fake_telegram.text_update(group, user, "@tertulia_bot name a fish.", topic=topic)
    )
    [reply] = replies(fake_telegram, group)
    assert reply.thread == str(topic)
    # The topic is a conversation of its own.
    answer = eventually(
        lambda: gateway.last_answer(f"telegram:{group}:{topic}", f"telegram:{user}"), timeout=120
    )
    eventually(
        lambda: fake_telegram.sent(str(group))[0].text.strip() == as_shown(answer).strip(),
        timeout=30,
        what="the whole answer in the topic",
    )
    typing = [a for a in fake_telegram.actions if int(a["chat_id"]) == group]
    assert typing and all(int(a["message_thread_id"]) == topic for a in typing)


def test_own_and_other_bots_messages_get_no_reply(
    fake_telegram: telegram.FakeTelegram, polling_bot: ManagedProcess
) -> None:
    group = new_group()
    fake_telegram.push_update(
        fake_telegram.text_update(group, 7000000001, "@tertulia_bot me", is_bot=True)
    )
    fake_telegram.push_update(
        fake_telegram.text_update(group, 6000000002, "@tertulia_bot beep", is_bot=True)
    )
    human = fake_telegram.text_update(group, new_user(), "@tertulia_bot hello")
    fake_telegram.push_update(human)
    [reply] = replies(fake_telegram, group)
    assert reply.extra["reply_to"] == human["message"]["message_id"]


def test_reset_clears_the_conversations_memory(
    fake_telegram: telegram.FakeTelegram, polling_bot: ManagedProcess, gateway: Gateway
) -> None:
    user = new_user()
    fake_telegram.push_update(fake_telegram.text_update(user, user, "Remember the word blue."))
    replies(fake_telegram, user)
    assert gateway.conversation(f"telegram:{user}:main", f"telegram:{user}")
    fake_telegram.push_update(fake_telegram.text_update(user, user, "/reset"))
    assert replies(fake_telegram, user, 2)[-1].text == RESET_DONE
    assert gateway.conversation(f"telegram:{user}:main", f"telegram:{user}") is None


def test_rate_limited_send_is_waited_out_and_retried(
    fake_telegram: telegram.FakeTelegram, polling_bot: ManagedProcess
) -> None:
    user = new_user()
    fake_telegram.rate_limit_next("sendMessage", retry_after=2)
    fake_telegram.push_update(fake_telegram.text_update(user, user, "Hello!"))
    [reply] = replies(fake_telegram, user)
    assert reply.text
    [(_, limited_at)] = [c for c in fake_telegram.rate_limited if c[0] == "sendMessage"]
    retried = [at for at in fake_telegram.called("sendMessage") if at > limited_at]
    assert retried and retried[0] - limited_at >= 1.9


def test_refused_markup_falls_back_to_plain_text(
    fake_telegram: telegram.FakeTelegram, polling_bot: ManagedProcess, gateway: Gateway
) -> None:
    fake_telegram.refuse_html = True
    try:
        user = new_user()
        fake_telegram.push_update(fake_telegram.text_update(user, user, "Say hello."))
        [reply] = replies(fake_telegram, user)
        assert reply.extra["parse_mode"] is None
        answer = gateway.last_answer(f"telegram:{user}:main", f"telegram:{user}")
        assert answer and reply.text == answer.rstrip()
    finally:
        fake_telegram.refuse_html = False


def start_webhook_bot(workdir, fake: telegram.FakeTelegram, settings: dict[str, str], name: str):
    port = free_port()
    process, _ = start_bot(
        "telegram",
        workdir,
        settings
        | {
            "MODE": "webhook",
            "API_URL": fake.base_url,
            "WEBHOOK_URL": "https://bots.example.test/telegram/updates",
            "WEBHOOK_HOST": "127.0.0.1",
            "WEBHOOK_PORT": str(port),
        },
        {"token": telegram.TOKEN, "webhook-secret": WEBHOOK_SECRET},
        name=name,
    )
    return process, f"http://127.0.0.1:{port}/telegram/updates"


@pytest.fixture
def webhook_telegram() -> Iterator[telegram.FakeTelegram]:
    """A Telegram of its own: while a webhook is set, Telegram refuses getUpdates."""
    with telegram.FakeTelegram() as fake:
        yield fake


def test_webhook_mode_checks_the_secret_and_splits_a_long_answer(
    tmp_path, webhook_telegram: telegram.FakeTelegram, gateway: Gateway
) -> None:
    fake_telegram = webhook_telegram
    settings = gateway.bot_settings() | {"MESSAGE_LIMIT": "200"}
    process, url = start_webhook_bot(tmp_path, fake_telegram, settings, "telegram-webhook")
    try:
        assert fake_telegram.webhook == {
            "url": "https://bots.example.test/telegram/updates",
            "secret_token": WEBHOOK_SECRET,
        }
        user = new_user()
        update = fake_telegram.text_update(user, user, "Tell me a very long story about the sea.")
        assert fake_telegram.post_webhook(url, update, "wrong-secret") == 403
        assert fake_telegram.post_webhook(url, update, None) == 403
        assert fake_telegram.post_webhook(url, update, WEBHOOK_SECRET) == 200
        answer = eventually(
            lambda: gateway.last_answer(f"telegram:{user}:main", f"telegram:{user}"),
            timeout=120,
            what="the gateway's answer",
        )
        assert len(answer) > 200, "the model's answer was too short to need splitting"
        pieces = eventually(
            lambda: (
                (
                    len(" ".join(m.text for m in fake_telegram.sent(str(user))).split())
                    >= len(as_shown(answer).split())
                )
                and fake_telegram.sent(str(user))
            ),
            timeout=60,
            what="every piece of the answer",
        )
        assert len(pieces) >= 2
        assert all(len(m.text) <= 200 for m in pieces)
        expected = [as_shown(piece) for piece in split_message(answer, 200)]
        assert [m.text for m in pieces] == expected
    finally:
        process.stop()


def test_gateway_outage_gets_a_friendly_message(
    tmp_path,
    webhook_telegram: telegram.FakeTelegram,
    gateway: Gateway,
    unreachable_gateway_url: str,
) -> None:
    fake_telegram = webhook_telegram
    settings = gateway.bot_settings() | {"GATEWAY_URL": unreachable_gateway_url}
    process, url = start_webhook_bot(tmp_path, fake_telegram, settings, "telegram-outage")
    try:
        user = new_user()
        fake_telegram.post_webhook(url, fake_telegram.text_update(user, user, "hi"), WEBHOOK_SECRET)
        [reply] = replies(fake_telegram, user)
        assert reply.text == UNAVAILABLE
    finally:
        process.stop()


def test_the_still_waiting_notice_is_a_message_of_its_own_before_the_answer(
    fake_telegram: telegram.FakeTelegram,
) -> None:
    group = new_group()
    update = fake_telegram.text_update(group, new_user(), "@tertulia_bot hello")

    async def answer_slowly() -> None:
        # The reply driven directly: the Bot API calls are python-telegram-bot's own.
        async with Bot(telegram.TOKEN, base_url=f"{fake_telegram.base_url}/bot") as bot:
            reply = TelegramReply(Message.de_json(update["message"], bot), 4096, 1)
            await reply.notice(STILL_WAITING)
            await reply.finish(0, "The answer.")

    asyncio.run(answer_slowly())
    notice, answer = fake_telegram.sent(str(group))
    # In italics, as the other platforms show it, not with Markdown's underscores.
    assert notice.extra["parse_mode"] == "HTML"
    assert notice.text == as_shown(STILL_WAITING) and "_" not in notice.text
    assert answer.text == "The answer."
    assert answer.extra["reply_to"] == update["message"]["message_id"]
