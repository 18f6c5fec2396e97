"""What the bot tests share: the real gateway, in front of the real llama.cpp server and
Redis, with an API key for the bots; and a reader of the conversations it remembers."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.testbed.process import free_port
from tests.testbed.servers import start_gateway


@dataclass
class Gateway:
    url: str
    key: str
    key_file: Path

    def conversation(self, conversation_id: str, user: str) -> list[dict[str, Any]] | None:
        """The turns the gateway remembers for this conversation, or None when it has none."""
        response = httpx.get(
            f"{self.url}/conversations/{conversation_id}",
            params={"user": user},
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=10,
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        turns: list[dict[str, Any]] = response.json()["turns"]
        return turns

    def last_answer(self, conversation_id: str, user: str) -> str | None:
        turns = self.conversation(conversation_id, user) or []
        answers = [turn["content"] for turn in turns if turn["role"] == "assistant"]
        return answers[-1] if answers else None

    def bot_settings(self) -> dict[str, str]:
        return {
            "GATEWAY_URL": self.url,
            "GATEWAY_KEY_FILE": str(self.key_file),
            "STREAM_INTERVAL": "0.3",
            # A busy machine can take the model past the default 15 s to a first word; the
            # notice would then be one message more than these tests count. It has its own.
            "WAITING_NOTICE_SECONDS": "600",
        }


@pytest.fixture(scope="package")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, llama_url: str, redis_url: str
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("bots-gateway")
    keys = workdir / "api-keys"
    keys.mkdir()
    key = secrets.token_urlsafe(24)
    (keys / "bots").write_text(key)
    key_file = workdir / "gateway-key"
    key_file.write_text(key)
    process, url = start_gateway(
        workdir,
        {
            "BACKEND__URL": llama_url,
            "REDIS_URL": redis_url,
            "API_KEYS_DIR": str(keys),
            "MAX_TOKENS": "120",
            "TEMPERATURE": "0",
            "RATE_LIMIT__ENABLED": "false",
        },
        name="bots-gateway",
    )
    yield Gateway(url, key, key_file)
    process.stop()


@pytest.fixture(scope="package")
def unreachable_gateway_url() -> str:
    """A gateway URL nothing listens on: the outage every bot must explain to its users."""
    return f"http://127.0.0.1:{free_port()}"
