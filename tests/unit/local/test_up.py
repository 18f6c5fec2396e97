"""`tertulia up`'s plan: what runs locally for a ChatBot spec, and what is left out and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from tertulia.local.models import SMOLLM2
from tertulia.local.up import _gateway_config, _load, bot_environment, plan

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "manifests" / "examples"


def _options(**overrides: Any) -> dict[str, Any]:
    return {
        "port": 8080,
        "model_port": 8000,
        "model": None,
        "docs": [],
        "secrets": None,
        "data_dir": None,
        **overrides,
    }


def _write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "bot.yaml"
    body = {"apiVersion": "tertulia.dev/v1alpha1", "kind": "ChatBot", "metadata": {"name": "b"}}
    path.write_text(yaml.safe_dump({**body, "spec": spec}))
    return path


def test_a_spec_for_another_engine_runs_smollm2_with_a_warning(tmp_path: Path) -> None:
    file = EXAMPLES / "cpu-ollama.yaml"
    local = plan(_load(file), file, _options())
    assert local.model == SMOLLM2
    assert any("local mode runs llama.cpp" in warning for warning in local.warnings)
    chosen = plan(_load(file), file, _options(model="/models/qwen.gguf"))
    assert chosen.model == "/models/qwen.gguf"
    assert not any("llama.cpp" in warning for warning in chosen.warnings)


def test_the_local_example_runs_the_packaged_instruct_model_without_a_warning() -> None:
    file = EXAMPLES / "local.yaml"
    local = plan(_load(file), file, _options())
    assert local.model == SMOLLM2
    assert not any("local mode runs llama.cpp" in warning for warning in local.warnings)


def test_the_knowledge_base_is_off_with_a_reason_without_weaviate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERTULIA_WEAVIATE_BIN", str(tmp_path / "missing"))
    file = EXAMPLES / "local.yaml"
    local = plan(_load(file), file, _options())
    assert not local.knowledge
    assert any("Weaviate's binary was not found" in warning for warning in local.warnings)


def test_sources_are_folders_beside_the_spec_and_docs_are_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "weaviate-server"
    binary.write_text("")
    monkeypatch.setenv("TERTULIA_WEAVIATE_BIN", str(binary))
    (tmp_path / "team-docs").mkdir()
    spec = {
        "model": {"engine": "llamacpp", "name": "gemma3-270m"},
        "knowledgeBase": {
            "enabled": True,
            "sources": [{"configMap": {"name": "team-docs"}}, {"configMap": {"name": "absent"}}],
        },
    }
    file = _write(tmp_path, spec)
    local = plan(_load(file), file, _options(docs=[REPO / "docs"]))
    assert local.knowledge
    assert local.documents == [tmp_path / "team-docs", REPO / "docs"]
    assert any("source absent" in warning for warning in local.warnings)


def test_platforms_run_only_with_their_token_files(tmp_path: Path) -> None:
    spec = {
        "model": {"engine": "llamacpp", "name": "gemma3-270m"},
        "platforms": {
            "discord": {"tokenSecretRef": {"name": "discord", "key": "token"}},
            "telegram": {"tokenSecretRef": {"name": "telegram", "key": "token"}},
        },
    }
    file = _write(tmp_path, spec)
    (tmp_path / "secrets" / "discord").mkdir(parents=True)
    (tmp_path / "secrets" / "discord" / "token").write_text("discord-token")
    local = plan(_load(file), file, _options())
    assert local.platforms == {"discord": {"token": tmp_path / "secrets" / "discord" / "token"}}
    assert any(
        "telegram is off" in warning and "secrets/telegram/token" in warning
        for warning in local.warnings
    )


def test_bots_keep_the_operators_platform_settings_but_not_its_addresses() -> None:
    bot = _load(EXAMPLES / "all-platforms.yaml")
    env = bot_environment(bot, "telegram")
    assert env["TERTULIA_BOT_MODE"] == "webhook"
    assert env["TERTULIA_BOT_WEBHOOK_URL"].startswith("https://")
    assert not {"TERTULIA_BOT_GATEWAY_URL", "TERTULIA_BOT_REDIS_URL"} & env.keys()


def test_the_gateway_is_configured_as_the_operator_would_but_pointed_at_local_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tertulia.gateway.settings import GatewaySettings

    binary = tmp_path / "weaviate-server"
    binary.write_text("")
    monkeypatch.setenv("TERTULIA_WEAVIATE_BIN", str(binary))
    file = EXAMPLES / "local.yaml"
    bot = _load(file)
    local = plan(bot, file, _options(port=9000, model_port=9100))
    keys = tmp_path / "keys"
    config = _gateway_config(bot, local, "redis://127.0.0.1:7000/0", tmp_path / "key", keys)
    settings = GatewaySettings.model_validate(config)
    assert settings.port == 9000 and settings.host == "127.0.0.1"
    # Keys of this run only, and no other host name than this machine's own.
    assert settings.api_keys_dir == keys
    assert settings.allowed_hosts == ["127.0.0.1", "localhost"]
    assert str(settings.backend.url) == "http://127.0.0.1:9100/v1"
    assert settings.system_prompt.startswith("You are Tertulia's local assistant")
    assert str(settings.knowledge_base.weaviate_url) == "http://127.0.0.1:9102/"
    assert str(settings.knowledge_base.embedding.url) == "http://127.0.0.1:9101/v1"


def test_a_file_that_is_not_a_chatbot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("kind: Deployment\n")
    with pytest.raises(typer.BadParameter, match="not a ChatBot"):
        _load(path)
    path.write_text("kind: ChatBot\nmetadata: {name: b}\nspec: {model: {engine: warp}}\n")
    with pytest.raises(typer.BadParameter, match="engine"):
        _load(path)


def test_a_port_is_busy_while_something_listens_not_while_old_connections_linger() -> None:
    import socket

    from tertulia.local.up import _port_free

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert not _port_free(port)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server closes first: its end of the connection stays in TIME_WAIT
    client.close()
    server.close()
    assert _port_free(port), "a stack stopped a moment ago must be able to start again"
