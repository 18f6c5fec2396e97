"""`tertulia model fetch` against a stand-in for the Hugging Face hub: a file is downloaded
once, a partial download resumes, replicas sharing a cache download once, a token reaches the
hub, and failures are one line with nothing half-written left under the file's name."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tertulia.common.weights import FetchFailed, cache_path, fetch, parse
from tests.fakes.model_hub import FakeModelHub
from tests.testbed.process import free_port

FILE = "owner/model-GGUF/model.Q4_K_M.gguf"
RESOLVED = "owner/model-GGUF/resolve/main/model.Q4_K_M.gguf"
TOKEN = "hf_secret"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hub") / "model.gguf"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return path


@pytest.fixture
def hub(weights: Path) -> Iterator[FakeModelHub]:
    with FakeModelHub({FILE: weights}) as fake:
        yield fake


def test_a_file_is_downloaded_once_into_its_own_folder(
    hub: FakeModelHub, weights: Path, tmp_path: Path
) -> None:
    source = parse(f"hf://{FILE}")
    path = fetch(source, tmp_path, endpoint=hub.base_url)
    assert path == tmp_path / "hf--owner--model-GGUF" / "model.Q4_K_M.gguf"
    assert path.read_bytes() == weights.read_bytes()
    assert fetch(source, tmp_path, endpoint=hub.base_url) == path
    assert len(hub.fetched(FILE)) == 1
    assert not list(path.parent.glob("*.partial"))


def test_a_partial_download_resumes_where_it_stopped(
    hub: FakeModelHub, weights: Path, tmp_path: Path
) -> None:
    source = parse(f"hf://{FILE}")
    target = tmp_path / cache_path(source)
    target.parent.mkdir(parents=True)
    whole = weights.read_bytes()
    target.with_name(target.name + ".partial").write_bytes(whole[:1_000_000])

    path = fetch(source, tmp_path, endpoint=hub.base_url)

    assert [r.range for r in hub.fetched(FILE)] == ["bytes=1000000-"]
    assert path.read_bytes() == whole


def test_replicas_sharing_a_cache_download_once(hub: FakeModelHub, tmp_path: Path) -> None:
    source = parse(f"hf://{FILE}")
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(fetch(source, tmp_path, endpoint=hub.base_url))
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 4
    assert len(hub.fetched(FILE)) == 1


def test_the_token_goes_to_the_hub(hub: FakeModelHub, tmp_path: Path) -> None:
    fetch(parse(f"hf://{FILE}"), tmp_path, endpoint=hub.base_url, token=TOKEN)
    assert [r.authorization for r in hub.fetched(FILE)] == [f"Bearer {TOKEN}"]


def test_a_missing_file_fails_with_its_url_and_leaves_nothing(
    hub: FakeModelHub, tmp_path: Path
) -> None:
    source = parse("hf://owner/model-GGUF/absent.gguf")
    with pytest.raises(FetchFailed, match=r"absent.gguf: HTTP 404"):
        fetch(source, tmp_path, endpoint=hub.base_url)
    assert not (tmp_path / cache_path(source)).exists()


def test_the_command_says_what_failed_in_one_line_without_the_token(tmp_path: Path) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("tertulia")), "model", "fetch", f"hf://{FILE}",
         "--cache", str(tmp_path)],
        env={**os.environ, "HF_ENDPOINT": unreachable, "HF_TOKEN": "hf_do_not_print"},
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"error: GET {unreachable}/{FILE.replace('/model.', '/resolve/main/model.', 1)}"
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hf_do_not_print" not in result.stderr + result.stdout
