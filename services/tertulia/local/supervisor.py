"""Child processes of `tertulia up`: started in order, each waited for with a spinner until
it answers its health check, their output prefixed with their name, and stopped together.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

COLORS = ["cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan"]


# A line longer than this is passed on in pieces of this size.
LINE_PIECE_BYTES = 1024 * 1024


async def lines(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Each line of `stream`, however long: `readline` (and `async for` over the stream)
    raises past its 64 KiB limit, and a server that logs a long line would stop the pump."""
    pending = b""
    while chunk := await stream.read(64 * 1024):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line
        while len(pending) >= LINE_PIECE_BYTES:
            yield pending[:LINE_PIECE_BYTES]
            pending = pending[LINE_PIECE_BYTES:]
    if pending:
        yield pending


class ComponentFailed(RuntimeError):
    """A child exited or never became healthy; the message carries its last lines."""


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our URL
                return bool(200 <= response.status < 300)
        except OSError:
            return False

    return check


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    healthy: Callable[[], bool] | None = None
    timeout: float = 300.0
    process: asyncio.subprocess.Process | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))


class Supervisor:
    def __init__(self, console: Console, log_dir: Path) -> None:
        self.console = console
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._pumps: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self, child: Child) -> None:
        """Start the child and wait, with a spinner, until its health check passes."""
        color = COLORS[len(self.children) % len(COLORS)]
        child.process = await asyncio.create_subprocess_exec(
            *child.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **child.env},
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )
        self.children.append(child)
        self._pumps.append(asyncio.create_task(self._pump(child, color)))
        if child.healthy is None:
            return
        deadline = time.monotonic() + child.timeout
        with self.console.status(f"waiting for {child.name}…", spinner="dots"):
            while not await asyncio.to_thread(child.healthy):
                if child.process.returncode is not None:
                    raise ComponentFailed(self._failure(child, "exited"))
                if time.monotonic() > deadline:
                    raise ComponentFailed(
                        self._failure(child, f"not healthy in {child.timeout:.0f} s")
                    )
                await asyncio.sleep(0.3)
        self.console.print(f"[{color}]{child.name}[/] ready", highlight=False)

    async def _pump(self, child: Child, color: str) -> None:
        assert child.process is not None and child.process.stdout is not None  # noqa: S101
        log = (self.log_dir / f"{child.name}.log").open("a", encoding="utf-8")
        with log:
            async for raw in lines(child.process.stdout):
                line = raw.decode(errors="replace").rstrip()
                child.tail.append(line)
                log.write(line + "\n")
                log.flush()
                self.console.print(
                    f"[{color}]{child.name:>10} |[/] {escape(line)}",
                    highlight=False,
                    soft_wrap=True,
                )

    def _failure(self, child: Child, what: str) -> str:
        lines = "\n".join(child.tail) or "(no output)"
        return f"{child.name} {what}; its last lines:\n{lines}"

    async def watch(self) -> Child:
        """Wait until a child exits, and return it."""
        waits = {
            asyncio.create_task(child.process.wait()): child
            for child in self.children
            if child.process is not None
        }
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return waits[next(iter(done))]

    def failure(self, child: Child) -> str:
        code = child.process.returncode if child.process else None
        return self._failure(child, f"exited with {code}")

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every child, newest first, then SIGKILL what is left after `grace`."""
        if self._stopping:
            return
        self._stopping = True
        for child in reversed(self.children):
            process = child.process
            if process is None or process.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        for pump in self._pumps:
            pump.cancel()
