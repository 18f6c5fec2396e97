"""No token in a log line: each bot runs at DEBUG, its SDK unmodified, against its fake
platform and the real gateway, answers one message, and its whole output carries neither
its platform token nor its gateway key (python-telegram-bot puts the token in every URL it
calls, and the HTTP clients log URLs). The gateway's own log, at DEBUG, carries no API key."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes import discord, slack, telegram
from tests.testbed.process import ManagedProcess, eventually
from tests.testbed.servers import start_bot, start_gateway

BOT_KEY = "gateway-key-" + secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, instruct_url: str, redis_url: str
) -> Iterator[tuple[str, Path, ManagedProcess]]:
    workdir = tmp_path_factory.mktemp("logs-gateway")
    keys = workdir / "api-keys"
    keys.mkdir()
    for identity in ("telegram", "slack", "discord"):
        (keys / identity).write_text(BOT_KEY + identity)
    process, url = start_gateway(
        workdir,
        {
            "BACKEND__URL": instruct_url,
            "REDIS_URL": redis_url,
            "API_KEYS_DIR": str(keys),
            "MAX_TOKENS": "8",
            "LOG_LEVEL": "debug",
            "USER_PREFIXES": '{"telegram": "telegram:", "slack": "slack:", "discord": "discord:"}',
        },
        name="logs-gateway",
    )
    yield url, keys, process
    process.stop()


def bot_settings(url: str, keys: Path, platform: str, workdir: Path) -> dict[str, str]:
    key_file = workdir / "gateway-key"
    key_file.write_text((keys / platform).read_text())
    return {
        "GATEWAY_URL": url,
        "GATEWAY_KEY_FILE": str(key_file),
        "LOG_LEVEL": "debug",
        "STREAM_INTERVAL": "0.3",
    }


def assert_no_secret(log: str, *values: str) -> None:
    assert '"level": "debug"' in log, "the process did not log at debug"
    for value in values:
        assert value not in log, f"a secret ({value[:6]}...) is in the log"


def test_the_telegram_bot_logs_no_token(
    tmp_path: Path, gateway: tuple[str, Path, ManagedProcess]
) -> None:
    url, keys, _ = gateway
    with telegram.FakeTelegram() as fake:
        settings = bot_settings(url, keys, "telegram", tmp_path)
        settings |= {"MODE": "polling", "API_URL": fake.base_url}
        process, _ = start_bot("telegram", tmp_path, settings, {"token": telegram.TOKEN})
        try:
            user = 42424242
            fake.push_update(fake.text_update(user, user, "Hello there"))
            eventually(lambda: fake.sent(str(user)), timeout=120, what="the answer")
        finally:
            process.stop()
    assert_no_secret(process.log_path.read_text(), telegram.TOKEN, BOT_KEY + "telegram")


def test_the_slack_bot_logs_no_token(
    tmp_path: Path, gateway: tuple[str, Path, ManagedProcess]
) -> None:
    url, keys, _ = gateway
    tokens = {
        "bot-token": slack.BOT_TOKEN,
        "app-token": slack.APP_TOKEN,
        "signing-secret": slack.SIGNING_SECRET,
    }
    with slack.FakeSlack() as fake:
        settings = bot_settings(url, keys, "slack", tmp_path)
        settings |= {"MODE": "socket", "API_URL": f"{fake.base_url}/api/"}
        process, _ = start_bot("slack", tmp_path, settings, tokens)
        try:
            fake.send_envelope(
                slack.event_body(slack.mention("C0LOGS", "U0ANA", "Hello there", "1.000001"))
            )
            eventually(lambda: fake.sent("C0LOGS"), timeout=120, what="the answer")
        finally:
            process.stop()
    assert_no_secret(process.log_path.read_text(), *tokens.values(), BOT_KEY + "slack")


def test_the_discord_bot_logs_no_token(
    tmp_path: Path, gateway: tuple[str, Path, ManagedProcess]
) -> None:
    url, keys, _ = gateway
    with discord.FakeDiscord() as fake:
        settings = bot_settings(url, keys, "discord", tmp_path)
        settings |= {
            "API_URL": f"{fake.base_url}/api/v10",
            "DISCORD_GATEWAY_URL": f"ws://127.0.0.1:{fake.port}/gw",
        }
        process, _ = start_bot("discord", tmp_path, settings, {"token": discord.TOKEN})
        try:
            before = len(fake.sent(discord.CHANNEL_ID))
            fake.post_message("Hello there", author="123456789012345678", mention_bot=True)
            eventually(
                lambda: len(fake.sent(discord.CHANNEL_ID)) > before, timeout=120, what="the answer"
            )
        finally:
            process.stop()
    assert_no_secret(process.log_path.read_text(), discord.TOKEN, BOT_KEY + "discord")


def test_the_gateway_logs_no_api_key_even_a_wrong_one(
    gateway: tuple[str, Path, ManagedProcess],
) -> None:
    url, _, process = gateway
    wrong = "not-a-key-" + secrets.token_urlsafe(16)
    assert (
        httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {wrong}"}).status_code
        == 401
    )
    assert (
        httpx.get(
            f"{url}/v1/models", headers={"Authorization": f"Bearer {BOT_KEY}slack"}
        ).status_code
        == 200
    )
    assert_no_secret(process.log_path.read_text(), BOT_KEY, wrong)
