"""The plan deletes only what is owned and no longer desired; status follows the children."""

from __future__ import annotations

from pathlib import Path

import pytest

from tertulia.operator.api import ChatBot, ChatBotStatus
from tertulia.operator.plan import ObjectRef, plan
from tertulia.operator.status import (
    IngestRun,
    MissingSecret,
    Refusal,
    Trouble,
    Workload,
    compute_status,
    failed_status,
)
from tests.unit.operator.test_render import (
    example,
    with_external_redis,
    with_external_weaviate,
    with_spec,
)


def deployment(name: str) -> dict[str, object]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}}


@pytest.mark.parametrize(
    ("observed", "desired", "deleted"),
    [
        ([], ["a", "b"], []),
        (["a", "b"], ["a", "b"], []),
        (["a", "b", "slack"], ["a", "b"], ["slack"]),
        (["a"], [], ["a"]),
    ],
)
def test_plan_applies_everything_desired_and_deletes_the_rest(
    observed: list[str], desired: list[str], deleted: list[str]
) -> None:
    result = plan(
        [ObjectRef("apps/v1", "Deployment", name) for name in observed],
        [deployment(name) for name in desired],
    )
    assert [m["metadata"]["name"] for m in result.apply] == desired
    assert [ref.name for ref in result.delete] == deleted


def test_an_object_of_another_kind_with_the_same_name_is_not_confused() -> None:
    result = plan([ObjectRef("v1", "Service", "a")], [deployment("a")])
    assert result.delete == [ObjectRef("v1", "Service", "a")]


READY = {
    "model": Workload(1, 1),
    "gateway": Workload(2, 2),
    "memory": Workload(1, 1),
    "knowledge-base": Workload(1, 1),
    "embeddings": Workload(1, 1),
    "slack": Workload(1, 1),
}


def conditions(status: ChatBotStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_all_children_ready_makes_the_chatbot_ready() -> None:
    status = compute_status(example("vllm-gpu-slack-kb"), READY, [], ChatBotStatus())
    assert status.phase == "Ready"
    assert all(value == "True" for value, _ in conditions(status).values())
    assert status.model.ready_replicas == 1
    assert status.model.selector == (
        "app.kubernetes.io/name=tertulia,app.kubernetes.io/instance=harbour,"
        "app.kubernetes.io/component=model"
    )
    assert status.endpoints.gateway == "http://harbour-gateway.bots.svc:8080"
    assert status.platforms == "slack"


def test_a_missing_secret_degrades_only_the_platforms() -> None:
    missing = [MissingSecret("slack", "slack", "app-token")]
    status = compute_status(example("vllm-gpu-slack-kb"), READY, missing, ChatBotStatus())
    found = conditions(status)
    assert status.phase == "Degraded"
    assert found["PlatformsReady"] == ("False", "SecretNotFound")
    assert found["ModelReady"] == ("True", "Ready")
    message = next(c.message for c in status.conditions if c.type == "PlatformsReady")
    assert "'slack'" in message and "'app-token'" in message


def test_a_failed_ingest_job_shows_in_the_knowledge_base_condition_with_what_it_said() -> None:
    bot = example("vllm-gpu-slack-kb")
    said = "BackoffLimitExceeded: not ingested /sources/0/guide.pdf: not a PDF"
    running = compute_status(bot, READY, [], ChatBotStatus(), IngestRun("harbour-ingest-1"))
    failed = compute_status(
        bot, READY, [], ChatBotStatus(), IngestRun("harbour-ingest-1", failed=True, reason=said)
    )
    assert running.phase == "Ready"
    assert failed.phase == "Degraded"
    assert conditions(failed)["KnowledgeBaseReady"] == ("False", "IngestFailed")
    assert conditions(failed)["ModelReady"] == ("True", "Ready")
    message = next(c.message for c in failed.conditions if c.type == "KnowledgeBaseReady")
    assert "harbour-ingest-1" in message and said in message


def test_unready_children_keep_it_progressing() -> None:
    status = compute_status(
        example("vllm-gpu-slack-kb"), {**READY, "model": Workload(3, 1)}, [], ChatBotStatus()
    )
    assert status.phase == "Progressing"
    assert conditions(status)["ModelReady"] == ("False", "NotReady")
    assert "1/3" in next(c.message for c in status.conditions if c.type == "ModelReady")


def test_a_model_woken_from_zero_is_waking_not_broken() -> None:
    bot = with_spec(example("vllm-gpu-slack-kb"), {"model": {"autoscaling": {"minReplicas": 0}}})
    woken = {**READY, "model": Workload(1, 0)}
    status = compute_status(bot, woken, [], ChatBotStatus())
    assert conditions(status)["ModelReady"] == ("True", "Waking")
    message = next(c.message for c in status.conditions if c.type == "ModelReady")
    assert "on GPUs, minutes" in message
    assert f"up to {bot.spec.model.queue_timeout_seconds()} s" in message
    # A replica that cannot start says why, woken or not.
    stuck = Trouble("Unschedulable", "pod harbour-model-0 cannot be scheduled: 0/3 nodes")
    status = compute_status(bot, woken, [], ChatBotStatus(), troubles={"model": [stuck]})
    assert conditions(status)["ModelReady"] == ("False", "Unschedulable")
    # Without autoscaling a model that is not up is not ready.
    status = compute_status(example("vllm-gpu-slack-kb"), woken, [], ChatBotStatus())
    assert conditions(status)["ModelReady"] == ("False", "NotReady")


def test_transition_time_moves_only_when_a_condition_flips() -> None:
    bot: ChatBot = example("vllm-gpu-slack-kb")
    first = compute_status(bot, READY, [], ChatBotStatus())
    stale = first.model_copy(
        update={
            "conditions": [
                c.model_copy(update={"last_transition_time": "2020-01-01T00:00:00Z"})
                for c in first.conditions
            ]
        }
    )
    again = compute_status(bot, READY, [], stale)
    flipped = compute_status(bot, {**READY, "gateway": Workload(2, 1)}, [], stale)
    assert {c.last_transition_time for c in again.conditions} == {"2020-01-01T00:00:00Z"}
    times = {c.type: c.last_transition_time for c in flipped.conditions}
    assert times["ModelReady"] == "2020-01-01T00:00:00Z"
    assert times["GatewayReady"] != "2020-01-01T00:00:00Z"


def test_a_spec_the_operator_cannot_use_ends_failed_with_the_reason() -> None:
    status = failed_status(3, ChatBotStatus(), "InvalidSpec", "spec.model.name: required")
    assert status.phase == "Failed"
    assert conditions(status)["Ready"] == ("False", "InvalidSpec")
    assert status.observed_generation == 3


def test_endpoint_engine_is_ready_without_a_model_server(tmp_path: Path) -> None:
    bot = example("external-endpoint")
    status = compute_status(
        bot,
        {"gateway": Workload(1, 1), "memory": Workload(1, 1), "discord": Workload(1, 1)},
        [],
        ChatBotStatus(),
    )
    assert conditions(status)["ModelReady"] == ("True", "External")
    assert status.phase == "Ready"


def test_a_refused_child_shows_on_its_components_condition_with_the_servers_message() -> None:
    refused = [
        Refusal(
            "Deployment",
            "harbour-model",
            "model",
            'Deployment.apps "harbour-model" is invalid: spec.template.spec.containers[0]'
            '.env[0].name: Invalid value: "1BAD"',
        ),
        Refusal("ServiceAccount", "harbour-workload", "workload", "forbidden"),
    ]
    status = compute_status(example("vllm-gpu-slack-kb"), READY, [], ChatBotStatus(), None, refused)
    found = conditions(status)
    assert found["ModelReady"] == ("False", "ApplyFailed")
    assert found["GatewayReady"] == ("True", "Ready")
    message = next(c.message for c in status.conditions if c.type == "ModelReady")
    assert "Deployment harbour-model was refused" in message and "env[0].name" in message
    # A child of no component's condition shows on Ready itself.
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert ready.reason == "ApplyFailed" and "ServiceAccount harbour-workload" in ready.message
    assert status.phase == "Degraded"


def test_a_source_configmap_not_there_yet_shows_on_the_knowledge_base() -> None:
    status = compute_status(
        example("vllm-gpu-slack-kb"), READY, [], ChatBotStatus(), None, [], ["team-docs"]
    )
    assert conditions(status)["KnowledgeBaseReady"] == ("False", "SourceNotFound")
    message = next(c.message for c in status.conditions if c.type == "KnowledgeBaseReady")
    assert "team-docs" in message
    assert status.phase == "Degraded"


@pytest.mark.parametrize(
    ("when", "says"),
    [
        ({}, "answers without memory and without rate limits"),
        ({"memory": {"whenUnavailable": "refuse"}}, "refuses chats"),
        ({"rateLimit": {"whenUnavailable": "refuse"}}, "refuses requests"),
    ],
)
def test_redis_not_ready_says_what_the_gateway_does_meanwhile(
    when: dict[str, object], says: str
) -> None:
    bot = with_spec(example("vllm-gpu-slack-kb"), {"gateway": when})
    status = compute_status(bot, {**READY, "memory": Workload(1, 0)}, [], ChatBotStatus())
    memory = next(c for c in status.conditions if c.type == "MemoryReady")
    assert (memory.status, memory.reason) == ("False", "NotReady")
    assert memory.message.startswith("0/1 Redis replicas Ready; meanwhile the gateway ")
    assert says in memory.message


def test_an_external_redis_is_memory_ready_without_a_workload() -> None:
    bot = with_external_redis(example("vllm-gpu-slack-kb"))
    ready = {component: found for component, found in READY.items() if component != "memory"}
    status = compute_status(bot, ready, [], ChatBotStatus())
    memory = next(c for c in status.conditions if c.type == "MemoryReady")
    assert (memory.status, memory.reason) == ("True", "External")
    assert "cache.example.com:6380" in memory.message
    assert status.phase == "Ready"


def test_a_missing_secret_of_the_external_redis_shows_on_memory_not_on_the_platforms() -> None:
    bot = with_external_redis(example("vllm-gpu-slack-kb"))
    ready = {component: found for component, found in READY.items() if component != "memory"}
    missing = [MissingSecret("memory", "managed-redis", "auth")]
    status = compute_status(bot, ready, missing, ChatBotStatus())
    found = conditions(status)
    assert found["MemoryReady"] == ("False", "SecretNotFound")
    assert found["PlatformsReady"] == ("True", "Ready")
    memory = next(c for c in status.conditions if c.type == "MemoryReady")
    assert "managed-redis" in memory.message and "auth" in memory.message
    assert status.phase == "Degraded"


def test_an_external_weaviate_is_ready_without_a_workload_until_its_secret_is_missing() -> None:
    bot = with_external_weaviate(example("vllm-gpu-slack-kb"))
    ready = {c: found for c, found in READY.items() if c != "knowledge-base"}
    status = compute_status(bot, ready, [], ChatBotStatus())
    assert conditions(status)["KnowledgeBaseReady"] == ("True", "External")
    assert status.phase == "Ready"

    missing = [MissingSecret("knowledge-base", "weaviate-cloud", "admin-key")]
    status = compute_status(bot, ready, missing, ChatBotStatus())
    found = conditions(status)
    assert found["KnowledgeBaseReady"] == ("False", "SecretNotFound")
    assert found["PlatformsReady"] == ("True", "Ready")
    knowledge = next(c for c in status.conditions if c.type == "KnowledgeBaseReady")
    assert "weaviate-cloud" in knowledge.message and "admin-key" in knowledge.message
    assert status.phase == "Degraded"


def test_a_missing_secret_of_the_backup_bucket_holds_the_knowledge_base_not_the_platforms() -> None:
    bucket = {"bucket": "backups", "accessKeyIdSecretRef": {"name": "bucket", "key": "id"}}
    bucket["secretAccessKeySecretRef"] = {"name": "bucket", "key": "secret"}
    bot = with_spec(example("vllm-gpu-slack-kb"), {"knowledgeBase": {"backup": {"s3": bucket}}})
    missing = [MissingSecret("knowledge-base", "bucket", "secret")]
    status = compute_status(bot, READY, missing, ChatBotStatus())
    found = conditions(status)
    assert found["KnowledgeBaseReady"] == ("False", "SecretNotFound")
    assert found["PlatformsReady"] == ("True", "Ready")
    knowledge = next(c for c in status.conditions if c.type == "KnowledgeBaseReady")
    assert knowledge.message.endswith("Weaviate starts once it exists")
