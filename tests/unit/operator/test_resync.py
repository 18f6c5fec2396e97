"""The resync loop: a ChatBot whose converge fails does not stop the others, nor the loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tertulia.operator import handlers
from tests.examples import EXAMPLES, chatbot_document


class Seen:
    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        self.bodies = bodies

    def chatbots(self) -> list[dict[str, Any]]:
        return self.bodies


def _bodies() -> list[dict[str, Any]]:
    bodies = []
    for namespace in ("going-away", "team"):
        body = chatbot_document(EXAMPLES / "vllm-gpu-slack-kb.yaml")
        body["metadata"].update(namespace=namespace, uid=f"uid-{namespace}")
        bodies.append(body)
    return bodies


async def test_a_failing_chatbot_is_skipped_and_the_loop_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    converged: list[str] = []
    three_rounds = threading.Event()

    def converge(namespace: str, *_: Any) -> None:
        if namespace == "going-away":
            raise ApiException(status=403, reason="namespace is being terminated")
        converged.append(namespace)
        if len(converged) == 3:
            three_rounds.set()

    monkeypatch.setattr(handlers, "SEEN", Seen(_bodies()))
    monkeypatch.setattr(handlers, "_converge_locked", converge)
    monkeypatch.setattr(handlers, "RESYNC_SECONDS", 0.01)

    loop = asyncio.create_task(handlers._resync_forever())
    try:
        assert await asyncio.to_thread(three_rounds.wait, 5), f"converged only {converged}"
    finally:
        loop.cancel()

    # Round after round, the failing ChatBot never stops the next one.
    assert converged[:3] == ["team", "team", "team"]
