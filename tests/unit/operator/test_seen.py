"""The operator's cache of what its watches report: filled from listings, kept by events."""

from __future__ import annotations

from typing import Any

from tertulia.operator.seen import IngestJob, Seen
from tertulia.operator.status import Workload
from tests.unit.operator.test_render import example


def _child(name: str, instance: str, component: str, replicas: int, ready: int) -> dict[str, Any]:
    """A Deployment as a listing gives it: no kind on the item."""
    return {
        "metadata": {
            "namespace": "bots",
            "name": name,
            "labels": {
                "app.kubernetes.io/instance": instance,
                "app.kubernetes.io/component": component,
            },
        },
        "spec": {"replicas": replicas},
        "status": {"readyReplicas": ready},
    }


def _job(name: str, created: str, failed: str = "") -> dict[str, Any]:
    conditions = [{"type": "Failed", "status": "True", "reason": failed}] if failed else []
    return {
        "kind": "Job",
        "metadata": {
            "namespace": "bots",
            "name": name,
            "creationTimestamp": created,
            "labels": {"app.kubernetes.io/instance": "helpdesk"},
        },
        "status": {"conditions": conditions},
    }


def test_a_listing_fills_it_and_each_chatbot_sees_only_its_own_children() -> None:
    bot = example("cpu-ollama")
    seen = Seen()
    seen.fill(
        "Deployment",
        [
            _child(f"{bot.name}-gateway", bot.name, "gateway", 2, 1),
            _child("other-gateway", "other", "gateway", 1, 1),
        ],
    )
    seen.fill("StatefulSet", [_child(f"{bot.name}-model", bot.name, "model", 1, 1)])
    assert seen.observed(bot).workloads == {
        "gateway": Workload(replicas=2, ready=1),
        "model": Workload(replicas=1, ready=1),
    }


def test_events_keep_it_current_and_a_deleted_child_is_forgotten() -> None:
    bot = example("cpu-ollama")
    seen = Seen()
    gateway = {"kind": "Deployment", **_child("tertulia-gateway", bot.name, "gateway", 1, 0)}
    seen.saw(gateway)
    assert not seen.observed(bot).workloads["gateway"].is_ready
    gateway["status"] = {"readyReplicas": 1}
    seen.saw(gateway)
    assert seen.observed(bot).workloads["gateway"].is_ready
    seen.saw(gateway, deleted=True)
    assert seen.observed(bot).workloads == {}


def test_ingest_jobs_carry_when_they_were_made_and_why_they_failed() -> None:
    bot = example("cpu-ollama")
    seen = Seen()
    seen.saw(_job("ingest-a", "2026-12-01T10:00:00Z", failed="PodFailurePolicy"))
    seen.saw(_job("ingest-b", "2026-12-01T11:00:00Z"))
    assert sorted(seen.observed(bot).ingest_jobs, key=lambda job: job.created) == [
        IngestJob("2026-12-01T10:00:00Z", "ingest-a", "PodFailurePolicy"),
        IngestJob("2026-12-01T11:00:00Z", "ingest-b", ""),
    ]


def test_chatbots_by_namespace_and_a_deleted_one_takes_its_children_along() -> None:
    bot = example("cpu-ollama")
    seen = Seen()
    body = {"kind": "ChatBot", "metadata": {"namespace": "bots", "name": bot.name}, "spec": {}}
    seen.saw(body)
    seen.saw({**body, "metadata": {"namespace": "other", "name": "x"}})
    seen.saw({"kind": "Deployment", **_child("tertulia-gateway", bot.name, "gateway", 1, 1)})
    assert [b["metadata"]["name"] for b in seen.chatbots("bots")] == [bot.name]
    assert len(seen.chatbots()) == 2
    seen.saw(body, deleted=True)
    assert seen.chatbot("bots", bot.name) is None
    assert seen.observed(bot).workloads == {}


def test_a_deleted_chatbots_late_events_do_not_bring_it_back_nor_remove_its_successor() -> None:
    seen = Seen()
    old = {"kind": "ChatBot", "metadata": {"namespace": "bots", "name": "shop", "uid": "u1"}}
    seen.saw(old)
    seen.saw(old, deleted=True)
    assert seen.gone("u1")
    # Events queued before the deletion (its status writes) are processed after it.
    assert not seen.saw({**old, "status": {"phase": "Ready"}})
    assert seen.chatbot("bots", "shop") is None
    # Made again under the name: a late DELETED of the old one leaves the new one.
    new = {"kind": "ChatBot", "metadata": {"namespace": "bots", "name": "shop", "uid": "u2"}}
    seen.saw(new)
    seen.saw(old, deleted=True)
    assert seen.chatbot("bots", "shop") is not None
