"""API keys from a mounted Secret, and settings from the environment over the config file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.datastructures import Headers

from tertulia.gateway.errors import Unauthorized
from tertulia.gateway.pipeline import auth
from tertulia.gateway.pipeline.auth import ANONYMOUS, ApiKeys, Identity, presented_key
from tertulia.gateway.settings import CONFIG_FILE_VARIABLE, GatewaySettings
from tertulia.gateway.store import SentinelAddress
from tests.unit.gateway.conftest import write_keys


def test_each_key_file_names_its_identity(tmp_path: Path) -> None:
    keys = ApiKeys(write_keys(tmp_path, {"bots": "k-bots", "web": "k-web"}))
    assert keys.identify("k-bots") == Identity("bots")
    assert keys.identify("k-web") == Identity("web")


def test_missing_and_wrong_keys_are_unauthorized(tmp_path: Path) -> None:
    keys = ApiKeys(write_keys(tmp_path, {"bots": "k-bots"}))
    with pytest.raises(Unauthorized, match="required"):
        keys.identify(None)
    with pytest.raises(Unauthorized, match="not valid"):
        keys.identify("k-bot")


def test_secret_mount_bookkeeping_entries_are_not_keys(tmp_path: Path) -> None:
    write_keys(tmp_path, {"bots": "k-bots"})
    (tmp_path / "..data").mkdir()
    (tmp_path / ".hidden").write_text("k-hidden")
    keys = ApiKeys(tmp_path)
    with pytest.raises(Unauthorized):
        keys.identify("k-hidden")


def test_an_edited_secret_is_picked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "_RELOAD_SECONDS", 0.0)
    keys = ApiKeys(write_keys(tmp_path, {"bots": "old"}))
    assert keys.identify("old") == Identity("bots")

    (tmp_path / "bots").unlink()
    write_keys(tmp_path, {"bots2": "new"})
    os.utime(tmp_path, (1, 1))  # a Secret update swaps a symlink, which changes the folder's mtime

    assert keys.identify("new") == Identity("bots2")
    with pytest.raises(Unauthorized):
        keys.identify("old")


def test_without_a_keys_folder_every_caller_is_anonymous() -> None:
    assert ApiKeys(None).identify(None) == ANONYMOUS


def test_key_is_read_from_bearer_or_x_api_key() -> None:
    assert presented_key(Headers({"authorization": "Bearer abc"})) == "abc"
    assert presented_key(Headers({"x-api-key": "xyz"})) == "xyz"
    assert presented_key(Headers({"authorization": "Basic abc"})) is None


def test_environment_overrides_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("system_prompt: From the file.\nmemory:\n  max_turns: 3\n  max_tokens: 100\n")
    monkeypatch.setenv(CONFIG_FILE_VARIABLE, str(config))
    monkeypatch.setenv("TERTULIA_GATEWAY_MEMORY__MAX_TURNS", "7")

    settings = GatewaySettings()

    assert settings.system_prompt == "From the file."
    assert settings.memory.max_turns == 7
    assert settings.memory.max_tokens == 100


def test_a_misspelt_setting_in_the_file_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("memory:\n  max_turn: 3\n")
    monkeypatch.setenv(CONFIG_FILE_VARIABLE, str(config))

    with pytest.raises(ValidationError, match="max_turn"):
        GatewaySettings()


def test_a_named_config_file_that_is_missing_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_FILE_VARIABLE, str(tmp_path / "absent.yaml"))
    with pytest.raises(FileNotFoundError, match=r"absent\.yaml"):
        GatewaySettings()


def test_a_ca_file_without_a_tls_redis_url_is_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    with pytest.raises(ValidationError, match="rediss://"):
        GatewaySettings(redis_url="redis://cache:6379/0", redis_ca_file=ca)
    assert GatewaySettings(redis_url="rediss://cache:6380/0", redis_ca_file=ca).redis_ca_file == ca


def test_a_sentinel_url_names_every_sentinel_and_the_primary_s_name() -> None:
    url = "redis+sentinel://memory-0.nodes:26379,memory-1.nodes:26379/memory/2"
    assert GatewaySettings(redis_url=url).redis_url == url
    address = SentinelAddress.parse(url)
    assert address.sentinels == [("memory-0.nodes", 26379), ("memory-1.nodes", 26379)]
    assert (address.name, address.db) == ("memory", 2)
    ipv6 = SentinelAddress.parse("redis+sentinel://[::1]:26379/memory")
    assert (ipv6.sentinels, ipv6.db) == ([("::1", 26379)], 0)
    # A Sentinel without its port, or no name for the primary, is refused before any connection.
    for wrong in ("redis+sentinel://memory-0:26379", "redis+sentinel://memory-0/memory"):
        with pytest.raises(ValidationError, match="redis_url"):
            GatewaySettings(redis_url=wrong)
