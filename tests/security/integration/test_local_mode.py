"""Attacks on local mode (`tertulia up`), against the real processes it starts: a web page of
another site whose name resolves to this machine (DNS rebinding) reading the local knowledge
base, a program on the machine without the run's key, and a spec whose names would have it
read files outside its folder."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.testbed.process import ManagedProcess, free_port

TERTULIA = str(Path(sys.executable).with_name("tertulia"))
FACT = "The lighthouse keeper of Punta Brava is called Ismael Ferreira."


@dataclass
class Local:
    url: str
    port: int
    model_port: int
    key: str
    web_key: str
    key_file: Path


def spec_file(folder: Path, **spec: object) -> Path:
    body = {
        "apiVersion": "tertulia.dev/v1alpha1",
        "kind": "ChatBot",
        "metadata": {"name": "harbour"},
        "spec": {"model": {"engine": "llamacpp", "name": "smollm2-135m-instruct"}, **spec},
    }
    path = folder / "harbour.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    folder = tmp_path_factory.mktemp("local")
    (folder / "docs").mkdir()
    (folder / "docs" / "lighthouse.md").write_text(f"# The lighthouse\n\n{FACT}\n")
    file = spec_file(
        folder,
        gateway={"maxTokens": 24, "temperature": 0},
        knowledgeBase={"enabled": True, "sources": [{"configMap": {"name": "docs"}}]},
    )
    port, model_port = free_port(), free_port()
    key_file = folder / "run" / "api-key"
    up = ManagedProcess(
        "up",
        [TERTULIA, "up", "-f", str(file), "--port", str(port), "--model-port", str(model_port),
         "--data-dir", str(folder / "data"), "--key-file", str(key_file)],
        folder,
        env={"COLUMNS": "400"},
    ).start()  # fmt: skip
    try:
        up.wait_until(lambda: "ready: " in up.log_path.read_text(), 300, "ready")
        web = re.search(r"/#key=([A-Za-z0-9_-]+)", up.log_path.read_text())
        assert web is not None, up.log_tail()
        yield Local(
            f"http://127.0.0.1:{port}",
            port,
            model_port,
            key_file.read_text().strip(),
            web.group(1),
            key_file,
        )
    finally:
        up.popen.send_signal(signal.SIGINT)
        up.popen.wait(timeout=60)


@pytest.mark.parametrize("path", ["/", "/readyz", "/web/welcome", "/v1/models"])
def test_a_page_of_another_site_on_this_machine_is_refused_by_its_host(
    local: Local, path: str
) -> None:
    """What a DNS-rebinding page sends: this machine's address, another site's name."""
    refused = httpx.get(
        f"{local.url}{path}",
        headers={"Host": f"attacker.example:{local.port}", "Authorization": f"Bearer {local.key}"},
        timeout=10,
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "unknown_host"


def test_the_knowledge_base_answers_only_with_the_runs_key(local: Local) -> None:
    question = {"message": "Who is the lighthouse keeper of Punta Brava?"}
    assert httpx.post(f"{local.url}/chat", json=question, timeout=10).status_code == 401
    guessed = {"Authorization": "Bearer not-the-key"}
    assert (
        httpx.post(f"{local.url}/chat", json=question, headers=guessed, timeout=10).status_code
        == 401
    )
    answered = httpx.post(
        f"{local.url}/chat",
        json=question,
        headers={"Authorization": f"Bearer {local.key}", "Host": "localhost"},
        timeout=120,
    )
    assert answered.status_code == 200, answered.text
    # The knowledge base was there to be read: the passage is the answer's source.
    assert any(FACT in source["text"] for source in answered.json()["sources"])


def test_the_web_chats_key_opens_a_session_and_the_admin_api_stays_closed_to_it(
    local: Local,
) -> None:
    with httpx.Client(base_url=local.url, timeout=10) as browser:
        opened = browser.post("/web/session", headers={"Authorization": f"Bearer {local.web_key}"})
        assert opened.status_code == 204
        assert browser.get("/web/welcome").status_code == 200
        listed = browser.get("/admin/knowledge/documents")
        assert listed.status_code == 403


@pytest.mark.parametrize("offset", [0, 1], ids=["model", "embeddings"])
def test_the_model_and_embeddings_servers_ask_the_runs_key_too(local: Local, offset: int) -> None:
    """llama-server on loopback, beside the gateway: a page whose name resolves to this
    machine, or another program, could call it directly; it asks a key only the gateway has."""
    base = f"http://127.0.0.1:{local.model_port + offset}"
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    assert httpx.get(f"{base}/v1/models", timeout=10).status_code == 401
    refused = httpx.post(
        f"{base}/v1/chat/completions" if offset == 0 else f"{base}/v1/embeddings",
        json={"messages": [{"role": "user", "content": "hi"}], "input": "hi"},
        headers={"Authorization": f"Bearer {local.key}"},
        timeout=30,
    )
    assert refused.status_code == 401


def test_it_listens_on_loopback_alone_and_its_key_is_the_users_alone(local: Local) -> None:
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.2", local.port)) != 0
    mode = stat.S_IMODE(local.key_file.stat().st_mode)
    assert mode == 0o600, oct(mode)


def run_up(file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TERTULIA, "up", "-f", str(file), "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},
    )


def test_a_spec_naming_a_secret_outside_its_folder_is_refused(tmp_path: Path) -> None:
    file = spec_file(
        tmp_path,
        platforms={"telegram": {"tokenSecretRef": {"name": "../../etc", "key": "passwd"}}},
    )
    result = run_up(file)
    assert result.returncode == 2
    assert "tokenSecretRef.name" in result.stderr + result.stdout


def test_a_source_folder_that_links_outside_its_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Not for the bot\n")
    folder = tmp_path / "spec"
    folder.mkdir()
    (folder / "docs").symlink_to(outside)
    file = spec_file(
        folder, knowledgeBase={"enabled": True, "sources": [{"configMap": {"name": "docs"}}]}
    )
    result = run_up(file)
    assert result.returncode == 2
    assert "outside" in result.stderr + result.stdout
