"""llama-server's command line in local mode: the threads TERTULIA_LLAMA_THREADS asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from tertulia.local.engine import EngineMissing, server_args


def _args() -> list[str]:
    return server_args(Path("model.gguf"), "m", host="127.0.0.1", port=8000, context=512)


@pytest.fixture(autouse=True)
def engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("")
    monkeypatch.setenv("TERTULIA_LLAMA_SERVER", str(binary))


def test_threads_are_llama_cpps_default_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TERTULIA_LLAMA_THREADS", raising=False)
    assert "--threads" not in _args()
    monkeypatch.setenv("TERTULIA_LLAMA_THREADS", "2")
    args = _args()
    assert args[args.index("--threads") + 1] == "2"


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_threads_setting_that_is_not_a_count_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TERTULIA_LLAMA_THREADS", value)
    with pytest.raises(EngineMissing, match="TERTULIA_LLAMA_THREADS"):
        _args()
