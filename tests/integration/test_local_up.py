"""`tertulia up` with a platform: the bot of the spec runs against a fake Telegram and
answers through the local gateway and model; Ctrl-C (SIGINT) stops every process."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import yaml

from tests.fakes import telegram
from tests.testbed.process import ManagedProcess, eventually, free_port


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_up_runs_the_specs_bot_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    spec = {
        "apiVersion": "tertulia.dev/v1alpha1",
        "kind": "ChatBot",
        "metadata": {"name": "harbour"},
        "spec": {
            "model": {"engine": "llamacpp", "name": "gemma3-270m"},
            "gateway": {"maxTokens": 40},
            "platforms": {
                "telegram": {"mode": "polling", "tokenSecretRef": {"name": "tg", "key": "token"}},
                "discord": {"tokenSecretRef": {"name": "discord", "key": "token"}},
            },
        },
    }
    file = tmp_path / "harbour.yaml"
    file.write_text(yaml.safe_dump(spec))
    (tmp_path / "secrets" / "tg").mkdir(parents=True)
    (tmp_path / "secrets" / "tg" / "token").write_text(telegram.TOKEN)
    gateway_port, model_port = free_port(), free_port()
    with telegram.FakeTelegram() as fake:
        up = ManagedProcess(
            "up",
            [str(Path(sys.executable).with_name("tertulia")), "up", "-f", str(file),
             "--port", str(gateway_port), "--model-port", str(model_port)],
            tmp_path,
            env={"TERTULIA_BOT_API_URL": fake.base_url, "COLUMNS": "200"},
        ).start()  # fmt: skip
        try:
            up.wait_until(lambda: "ready: " in up.log_path.read_text(), 300, "ready")
            log = up.log_path.read_text()
            assert "discord is off: no token file" in log
            assert "telegram ready" in log

            user = 424242
            fake.push_update(fake.text_update(user, user, "Hello there"))
            replies = eventually(
                lambda: [m for m in fake.sent(str(user)) if m.text.strip()],
                timeout=120,
                what="the bot's answer",
            )
            assert replies[0].text.strip()
            assert "  telegram |" in up.log_path.read_text(), "bot output is prefixed"
        finally:
            up.popen.send_signal(signal.SIGINT)
            code = up.popen.wait(timeout=60)
    assert code == 0, up.log_tail()
    assert "stopping" in up.log_path.read_text()
    assert not _listening(gateway_port) and not _listening(model_port)
