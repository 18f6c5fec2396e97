"""The local supervisor's reading of its children's output."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

from rich.console import Console

from tertulia.local.supervisor import Child, Supervisor


def test_a_line_past_asyncios_64_kib_limit_does_not_stop_the_output(tmp_path: Path) -> None:
    # What a server logging one long line (a whole request body, say) writes, then more.
    script = "import sys, time; print('x' * 200_000); print('ready', flush=True); time.sleep(30)"

    async def run() -> Child:
        supervisor = Supervisor(Console(file=io.StringIO()), tmp_path)
        child = Child("server", [sys.executable, "-c", script])
        await supervisor.start(child)
        try:
            for _ in range(100):
                if "ready" in child.tail:
                    break
                await asyncio.sleep(0.05)
        finally:
            await supervisor.stop(grace=1)
        return child

    child = asyncio.run(run())
    assert list(child.tail)[:2] == ["x" * 200_000, "ready"]
    assert (tmp_path / "server.log").read_text().splitlines()[:2] == ["x" * 200_000, "ready"]
