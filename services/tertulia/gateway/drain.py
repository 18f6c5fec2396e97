"""Stopping without cutting an answer: the drain that SIGTERM starts.

A pod that is told to stop is still in its Service's endpoints for a moment (the endpoint
controller, kube-proxy and any load balancer catch up in seconds), and it may be streaming
answers that take a minute. So the gateway, on SIGTERM:

1. fails /readyz at once (`draining`), so it leaves the endpoints, and asks each client it
   answers to close its connection (`Connection: close`), so pooled connections move to
   another replica;
2. keeps serving for `shutdown.drain_delay_seconds`, answering whatever still reaches it;
3. stops listening, and lets the answers in flight finish, for at most
   `shutdown.grace_seconds` (the pod's termination grace period covers both);
4. exits.

A second SIGTERM skips what is left of the delay; a second Ctrl-C quits at once.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

logger = logging.getLogger(__name__)


class Drain:
    """Whether, and since when, this process is draining; the readiness probe and the
    request middleware read it."""

    def __init__(self) -> None:
        self.started: float | None = None

    @property
    def draining(self) -> bool:
        return self.started is not None

    def start(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started


class DrainingServer(uvicorn.Server):
    """uvicorn, whose first stop signal starts `drain` and whose shutdown (stop listening,
    finish what is in flight) begins `delay` seconds later."""

    def __init__(self, config: uvicorn.Config, drain: Drain, delay: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.delay = delay

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining:
            super().handle_exit(sig, frame)  # again: stop now (a second Ctrl-C: at once)
            return
        # Raised again once the server has stopped, as uvicorn does with the ones it handles.
        self._captured_signals.append(sig)
        self.drain.start()
        logger.info(
            "%s: draining; still serving for %.0f s, then finishing the answers in flight",
            signal.Signals(sig).name,
            self.delay,
        )

    async def on_tick(self, counter: int) -> bool:
        if self.drain.draining and self.drain.elapsed() >= self.delay:
            self.should_exit = True
        return await super().on_tick(counter)
