"""The operator's event handlers against each other: a converge that waited for a ChatBot's
lock acts on the ChatBot as its last event left it, a label that a late converge put on a
user's object is taken off again, and a status computed from a stale copy is put right when
the ChatBot's own event arrives."""

from __future__ import annotations

import threading
import time
from typing import Any

import kopf
import pytest

from tertulia.operator import converge, handlers
from tertulia.operator.render.common import WATCH_LABEL
from tertulia.operator.seen import Seen
from tests.examples import EXAMPLES, chatbot_document

NAMESPACE = "team"
# The handlers as plain functions: kopf's decorators type them as its own callbacks.
on_source_event: Any = handlers._on_source_event
on_chatbot_event: Any = handlers._on_chatbot_event
reconcile: Any = handlers.reconcile


class Cluster:
    """What the handlers ask of the API server, recorded."""

    def __init__(self) -> None:
        self.released: list[tuple[str, str]] = []

    def unwatch(self, namespace: str, collection: str, name: str) -> None:
        self.released.append((collection, name))


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Seen:
    fresh = Seen()
    monkeypatch.setattr(handlers, "SEEN", fresh)
    return fresh


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    fake = Cluster()
    monkeypatch.setattr(handlers, "cluster", lambda: fake)
    return fake


@pytest.fixture
def converged(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ChatBots converged, as converge was given them."""
    calls: list[Any] = []
    monkeypatch.setattr(handlers, "converge", lambda bot, *_: calls.append(bot))
    return calls


def _chatbot(generation: int = 1, **spec: Any) -> dict[str, Any]:
    body = chatbot_document(EXAMPLES / "vllm-gpu-slack-kb.yaml")
    body["metadata"].update(namespace=NAMESPACE, uid="uid-1", generation=generation)
    body["spec"].update(spec)
    return body


def _faq(labelled: bool = True) -> dict[str, Any]:
    labels = {WATCH_LABEL: "true"} if labelled else {}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"namespace": NAMESPACE, "name": "faq", "labels": labels},
    }


def _event(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": body}


@pytest.mark.parametrize(("meanwhile", "generations"), [("deleted", []), ("changed", [2])])
def test_a_converge_that_waited_for_the_lock_reads_the_chatbot_as_it_is_now(
    seen: Seen, converged: list[Any], meanwhile: str, generations: list[int]
) -> None:
    """A converge that waited while the ChatBot was deleted does nothing (it would label what
    the deletion released); one that waited while its spec changed converges the new spec."""
    body = _chatbot()
    seen.saw(body)
    lock = converge.known(NAMESPACE, body["metadata"]["name"]).lock
    with lock:
        waiter = threading.Thread(
            target=handlers._converge_locked, args=(NAMESPACE, body["metadata"]["name"])
        )
        waiter.start()
        time.sleep(0.05)
        if meanwhile == "deleted":
            seen.saw(body, deleted=True)
        else:
            seen.saw(_chatbot(generation=2))
    waiter.join(5)
    assert not waiter.is_alive()
    assert [bot.generation for bot in converged] == generations


def test_a_users_object_labelled_as_its_chatbot_went_is_released_when_its_label_is_seen(
    seen: Seen, kube: Cluster, converged: list[Any]
) -> None:
    # No ChatBot in the namespace: a converge that ran as the last one went labelled it.
    on_source_event(_event("ADDED", _faq()), NAMESPACE, "faq")
    assert kube.released == [("configmaps", "faq")]
    assert converged == []


def test_a_users_object_a_chatbot_names_keeps_its_label(
    seen: Seen, kube: Cluster, converged: list[Any]
) -> None:
    body = _chatbot()
    body["spec"]["knowledgeBase"]["sources"] = [{"configMap": {"name": "faq"}}]
    seen.saw(body)
    on_source_event(_event("ADDED", _faq()), NAMESPACE, "faq")
    assert kube.released == []
    assert [bot.name for bot in converged] == [body["metadata"]["name"]]


@pytest.mark.parametrize(("converged_generation", "written"), [(1, True), (0, False)])
def test_the_chatbots_own_event_writes_a_status_a_child_compared_with_a_stale_copy(
    seen: Seen,
    kube: Cluster,
    monkeypatch: pytest.MonkeyPatch,
    converged_generation: int,
    written: bool,
) -> None:
    """A child's event computed the status against the ChatBot as last seen; when that copy
    lagged the server's, nothing was written. The ChatBot's next event (the current status)
    writes it, but never for a generation this process has not converged."""
    writes: list[Any] = []
    monkeypatch.setattr(handlers, "write_status", lambda bot, previous, *_: writes.append(bot))
    body = _chatbot()
    name = body["metadata"]["name"]
    state = converge.known(NAMESPACE, name)
    state.inputs, state.converged = converge.Inputs(), converged_generation
    try:
        on_chatbot_event(_event("MODIFIED", body), NAMESPACE, name)
    finally:
        converge.forget(NAMESPACE, name)
    assert [bot.generation for bot in writes] == ([1] if written else [])


def test_a_chatbot_found_gone_by_a_404_is_handled_as_deleted_before_its_deleted_event(
    seen: Seen, kube: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each status write queues an event; when the ChatBot is deleted, kopf still hands
    those to the handlers, one by one, before the DELETED. The first 404 ends it: its labels
    come off at once, and the queued events neither bring it back nor converge it."""
    body = _chatbot()
    body["spec"]["knowledgeBase"]["sources"] = [{"configMap": {"name": "faq"}}]
    name = body["metadata"]["name"]
    seen.saw(body)
    seen.saw_labelled("configmaps", _faq(), deleted=False)
    converged: list[Any] = []

    def gone(bot: Any, *_: Any) -> None:
        converged.append(bot)
        raise converge.ChatBotGone(bot.uid)

    monkeypatch.setattr(handlers, "converge", gone)
    handlers._converge_locked(NAMESPACE, name)
    assert kube.released == [("configmaps", "faq")]
    assert seen.chatbot(NAMESPACE, name) is None

    # An event queued before the deletion: the ChatBot stays gone, and is not converged.
    on_chatbot_event(_event("MODIFIED", body), NAMESPACE, name)
    reconcile(body=kopf.Body(body))
    assert seen.chatbot(NAMESPACE, name) is None
    assert len(converged) == 1
