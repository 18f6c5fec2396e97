"""The stack on the real node, as a user meets it: `helm install` runs the operator as a pod;
one ChatBot brings every pod up on the real node; a Telegram message is answered by the
in-cluster model through the in-cluster gateway, citing the ConfigMap the ingest Job put in
the knowledge base; the conversation is in the in-cluster Redis; the NetworkPolicies keep the
bots to the gateway; `kubectl scale` gives two
model pods that both serve; a model pod deleted mid-conversation does not cost the next
answer; a document that cannot be read, a model server that crash-loops and an image that
cannot be pulled each say why in the status; `helm upgrade` to a new operator image keeps a
gateway Ready throughout; a knowledge base made again on two Weaviate nodes answers the same
with either node deleted; and `kubectl delete chatbot` removes every pod.

The tests run in this order and build on each other's state, as a user's first day does.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml
from kubernetes import client

from tertulia.gateway.store import hashed_key
from tertulia.operator.render.images import REDIS
from tests.cluster.conftest import (
    CHAT_MODEL,
    EMBEDDING_MODEL,
    chat_model_spec,
    streamed_answer,
)
from tests.fakes import slack, telegram
from tests.fakes.model_hub import FakeModelHub
from tests.testbed.kube import ControlPlane
from tests.testbed.node import NODE_NAME
from tests.testbed.paths import REPO_ROOT
from tests.testbed.process import eventually

CHART = REPO_ROOT / "charts" / "tertulia"
OPERATOR_NAMESPACE = "tertulia-system"
RELEASE = "tertulia"
NAMESPACE = "chat"
# The image the gateway and the bots run from (services/Dockerfile), as `make images` tags it.
WORKLOAD_IMAGE = "ghcr.io/tertulia/tertulia:0.1.0"
# Where Prometheus runs: the chart names it as the scrapers of the ChatBots' metrics.
MONITORING = "monitoring"
SCRAPERS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING}}}
# Both the operator's namespace and the ChatBots' enforce the restricted Pod Security profile.
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
BOT = "harbour"
GROUP, VERSION, PLURAL = "tertulia.dev", "v1alpha1", "chatbots"
INSTANCE = f"app.kubernetes.io/instance={BOT}"
# The components a ChatBot with a knowledge base, Telegram and Slack runs as Deployments or
# StatefulSets.
COMPONENTS = {"model", "embeddings", "gateway", "memory", "knowledge-base", "telegram", "slack"}
# What the knowledge base holds, and a question whose answer is in it.
DOCUMENT = """# Harbour guide

## Ferries

The ferry to Isla Verde leaves from berth 7 at 06:40 every morning. Tickets cost 12 euros
and are sold at the blue kiosk beside the fish market.

## Parking

Cars park on the north quay. The car park closes at midnight.
"""
QUESTION = "When does the ferry to Isla Verde leave?"
READY_TIMEOUT = 420.0


def run(cluster: ControlPlane, tool: str, *args: str, stdin: str | None = None) -> str:
    result = cluster.run_tool(tool, *args, stdin=stdin)
    assert result.returncode == 0, f"{tool} {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def core(cluster: ControlPlane) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api_client())


def is_ready(pod: Any) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
    )


def pods(cluster: ControlPlane, component: str | None = None) -> list[Any]:
    selector = INSTANCE + (f",app.kubernetes.io/component={component}" if component else "")
    return list(core(cluster).list_namespaced_pod(NAMESPACE, label_selector=selector).items)


def chatbot(cluster: ControlPlane, name: str = BOT) -> dict[str, Any]:
    custom = client.CustomObjectsApi(cluster.api_client())
    return cast(
        dict[str, Any], custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    )


def wait_observed(cluster: ControlPlane, what: str) -> None:
    """Until the operator has applied the ChatBot's current generation."""
    eventually(
        lambda: (
            chatbot(cluster)["status"].get("observedGeneration")
            == chatbot(cluster)["metadata"]["generation"]
        ),
        60,
        f"the operator to apply {what}",
    )


def container_log(cluster: ControlPlane, pod: str, container: str) -> str:
    """The last lines a container wrote."""
    return cluster.run_tool(
        "kubectl", "logs", "-n", NAMESPACE, pod, "-c", container, "--tail", "20"
    ).stdout  # fmt: skip


def wait_ready(
    cluster: ControlPlane, timeout: float = READY_TIMEOUT, name: str = BOT
) -> dict[str, Any]:
    """The ChatBot once Ready at its generation; else its status, every pod, and the last
    lines of each container of its pods that are not ready, in the error."""

    def ready() -> dict[str, Any] | None:
        body = chatbot(cluster, name)
        status = body.get("status") or {}
        current = status.get("observedGeneration") == body["metadata"]["generation"]
        return body if current and status.get("phase") == "Ready" else None

    try:
        found: dict[str, Any] = eventually(ready, timeout, "the ChatBot to be Ready", interval=2)
    except TimeoutError as error:
        status = json.dumps(chatbot(cluster, name).get("status"), indent=1)
        listing = run(cluster, "kubectl", "get", "pods", "-A", "-o", "wide")
        selector = f"app.kubernetes.io/instance={name}"
        logs = [
            f"--- {pod.metadata.name} {container.name}:\n"
            + container_log(cluster, str(pod.metadata.name), container.name)
            for pod in core(cluster).list_namespaced_pod(NAMESPACE, label_selector=selector).items
            if not is_ready(pod)
            for container in pod.spec.containers
        ]
        raise AssertionError(f"{error}\nstatus: {status}\n{listing}\n" + "\n".join(logs)) from None
    return found


def service_url(cluster: ControlPlane, component: str, port: int) -> str:
    """A URL on the host that reaches the component's Service through kube-proxy's rules
    inside the node's namespace, as any client in the cluster reaches it."""
    service = core(cluster).read_namespaced_service(f"{BOT}-{component}", NAMESPACE)
    host, local_port = cluster.reachable(service.spec.cluster_ip, port)
    return f"http://{host}:{local_port}"


def model_metric(cluster: ControlPlane, pod: Any, name: str) -> float:
    """A llama.cpp server's Prometheus counter, read from the pod itself."""
    host, port = cluster.reachable(pod.status.pod_ip, 8080)
    text = httpx.get(f"http://{host}:{port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f"llamacpp:{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no llamacpp:{name} in the metrics of {pod.metadata.name}")


@pytest.fixture(scope="module")
def operator(cluster: ControlPlane) -> Iterator[None]:
    """The chart installed as a platform team would, into a namespace that enforces the
    restricted Pod Security profile."""
    core(cluster).create_namespace(
        {
            "metadata": {
                "name": OPERATOR_NAMESPACE,
                "labels": RESTRICTED,
            }
        }
    )
    run(
        cluster, "helm", "install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE,
        "--set-json", f"metrics.scrapers={json.dumps(SCRAPERS)}",
        # The node's images are stand-ins under the upstream tags, without their digests.
        "--set", "imageDigests=false",
        "--wait", "--timeout", "180s",
    )  # fmt: skip
    yield
    cluster.run_tool("helm", "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE)


@pytest.fixture(scope="module")
def namespace(cluster: ControlPlane) -> str:
    """The namespace of the module's ChatBots, enforcing the restricted Pod Security profile
    as the operator's does: every pod of the stack, model servers included, is admitted."""
    core(cluster).create_namespace({"metadata": {"name": NAMESPACE, "labels": RESTRICTED}})
    return NAMESPACE


@pytest.fixture(scope="module")
def stack(
    cluster: ControlPlane,
    operator: None,
    namespace: str,
    model_hub: FakeModelHub,
    fake_telegram: telegram.FakeTelegram,
    fake_slack: slack.FakeSlack,
) -> dict[str, Any]:
    """The ChatBot, with its Secrets and its ConfigMap of documents, Ready."""
    api = core(cluster)
    api.create_namespaced_secret(
        NAMESPACE, {"metadata": {"name": "telegram"}, "stringData": {"token": telegram.TOKEN}}
    )
    api.create_namespaced_secret(
        NAMESPACE,
        {
            "metadata": {"name": "slack"},
            "stringData": {"bot-token": slack.BOT_TOKEN, "app-token": slack.APP_TOKEN},
        },
    )
    api.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"name": "harbour-docs"}, "data": {"guide.md": DOCUMENT}}
    )
    hub = model_hub.base_url
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ChatBot",
        "metadata": {"name": BOT, "namespace": NAMESPACE},
        "spec": {
            "model": {
                **chat_model_spec(hub),
                # A claim per replica (ReadWriteOnce, the local class), each filled once.
                "cache": {"size": "1Gi"},
            },
            "gateway": {
                "systemPrompt": "You answer questions about the harbour, briefly, from the "
                "passages given.",
                "temperature": 0,
                "maxTokens": 48,
                "rateLimit": {"requestsPerMinute": 600, "burst": 50},
            },
            "knowledgeBase": {
                "enabled": True,
                "storage": "1Gi",
                "embedding": {"model": "all-minilm-l6-v2", "source": f"hf://{EMBEDDING_MODEL}"},
                "sources": [{"configMap": {"name": "harbour-docs"}}],
                "topK": 2,
            },
            "platforms": {
                "telegram": {
                    "tokenSecretRef": {"name": "telegram", "key": "token"},
                    # A self-hosted Bot API server's URL: here, the fake Telegram.
                    "apiUrl": fake_telegram.base_url,
                },
                "slack": {
                    "mode": "socket",
                    "botTokenSecretRef": {"name": "slack", "key": "bot-token"},
                    "appTokenSecretRef": {"name": "slack", "key": "app-token"},
                    # Slack's API base URL, as GovSlack sets it: here, the fake Slack.
                    "apiUrl": f"{fake_slack.base_url}/api/",
                },
            },
        },
    }
    run(cluster, "kubectl", "apply", "-f", "-", stdin=yaml.safe_dump(body))
    ready = wait_ready(cluster)
    # The documents are in once the ingest Job has finished, as `kubectl wait` tells a user.
    run(
        cluster, "kubectl", "wait", "-n", NAMESPACE, "job", "-l",
        f"{INSTANCE},app.kubernetes.io/component=ingest",
        "--for=condition=Complete", "--timeout=300s",
    )  # fmt: skip
    return ready


@dataclass
class Exchange:
    chat: int
    user: int
    question: str
    answer: str
    sources: str


def ask_on_telegram(fake: telegram.FakeTelegram, chat: int, user: int, question: str) -> Exchange:
    """A private message to the bot, and its final answer (not a draft)."""
    before = len(fake.sent(str(chat)))
    fake.push_update(fake.text_update(chat, user, question))
    message = eventually(
        lambda: len(fake.sent(str(chat))) > before and fake.sent(str(chat))[-1],
        timeout=180,
        what=f"an answer in chat {chat}",
    )
    # Long answers are edited into place while they stream: wait for the last version.
    eventually(lambda: "Sources:" in message.text or time.monotonic() - message.created > 20, 60)
    answer, _, sources = message.text.partition("\n\nSources: ")
    return Exchange(chat, user, question, answer.strip(), sources)


def remembered(cluster: ControlPlane, exchange: Exchange) -> list[dict[str, Any]]:
    """The conversation's turns as the in-cluster Redis holds them (`redis-cli` in its pod)."""
    key = hashed_key(
        "tertulia:conversation",
        "telegram",  # the Telegram bot's own API key identity
        f"telegram:{exchange.user}",
        f"telegram:{exchange.chat}:main",
    )
    memory = pods(cluster, "memory")[0].metadata.name
    out = run(
        cluster, "kubectl", "exec", "-n", NAMESPACE, memory, "--",
        "redis-cli", "--no-raw", "LRANGE", key, "0", "-1",
    )  # fmt: skip
    turns = []
    for line in out.splitlines():
        # redis-cli prints `1) "json"`, the JSON quoted and escaped as a string literal.
        quoted = line.split(") ", 1)[1]
        turns.append(json.loads(json.loads(quoted)))
    return turns


@pytest.fixture(scope="module")
def first_exchange(
    cluster: ControlPlane, stack: dict[str, Any], fake_telegram: telegram.FakeTelegram
) -> Exchange:
    chat = random.randint(10_000_000, 99_999_999)
    return ask_on_telegram(fake_telegram, chat, chat, QUESTION)


def test_every_pod_of_the_stack_runs_ready_on_the_real_node(
    cluster: ControlPlane, stack: dict[str, Any]
) -> None:
    running = [pod for pod in pods(cluster) if pod.metadata.owner_references[0].kind != "Job"]
    assert {pod.metadata.labels["app.kubernetes.io/component"] for pod in running} == COMPONENTS
    operator_pods = core(cluster).list_namespaced_pod(OPERATOR_NAMESPACE).items
    assert len(operator_pods) == 1
    for pod in [*running, *operator_pods]:
        assert is_ready(pod), f"{pod.metadata.name}: {pod.status.phase} {pod.status.conditions}"
        assert pod.spec.node_name == NODE_NAME, pod.metadata.name
    # The operator runs from its own image as the chart's ServiceAccount, admitted under the
    # restricted Pod Security profile its namespace enforces.
    operator = operator_pods[0]
    assert operator.spec.containers[0].image == "ghcr.io/tertulia/operator:0.1.0"
    assert operator.spec.service_account_name == RELEASE


def test_the_model_weights_came_through_the_hub_and_the_ingest_job_completed(
    cluster: ControlPlane, stack: dict[str, Any], model_hub: FakeModelHub
) -> None:
    assert model_hub.fetched(CHAT_MODEL), "the model server never fetched its weights"
    assert model_hub.fetched(EMBEDDING_MODEL), "the embeddings server never fetched its model"
    jobs = client.BatchV1Api(cluster.api_client()).list_namespaced_job(
        NAMESPACE, label_selector=f"{INSTANCE},app.kubernetes.io/component=ingest"
    )
    assert [job.status.succeeded for job in jobs.items] == [1]
    (job_pod,) = [p for p in pods(cluster, "ingest") if p.status.phase == "Succeeded"]
    assert job_pod.spec.node_name == NODE_NAME


def test_a_telegram_message_is_answered_by_the_in_cluster_model_citing_the_configmap(
    cluster: ControlPlane, stack: dict[str, Any], first_exchange: Exchange
) -> None:
    # The model's own words, not an error or the empty-answer notice, and the passage cited.
    assert first_exchange.answer
    assert first_exchange.sources.startswith("Harbour guide"), first_exchange.sources
    # Generated by the llama.cpp pod: it predicted tokens for it.
    (model,) = pods(cluster, "model")
    assert model_metric(cluster, model, "tokens_predicted_total") > 0
    # And given to the user as the gateway remembers it.
    turns = remembered(cluster, first_exchange)
    assert turns[-1]["role"] == "assistant"
    assert turns[-1]["content"].strip() == first_exchange.answer


def test_the_conversation_is_in_the_in_cluster_redis(
    cluster: ControlPlane, first_exchange: Exchange
) -> None:
    turns = remembered(cluster, first_exchange)
    assert [turn["role"] for turn in turns] == ["user", "assistant"]
    assert turns[0]["content"] == QUESTION
    # Only with the generated password, which the gateway alone mounts besides Redis.
    memory = pods(cluster, "memory")[0].metadata.name
    refused = run(
        cluster, "kubectl", "exec", "-n", NAMESPACE, memory, "--",
        "env", "-u", "REDISCLI_AUTH", "redis-cli", "ping",
    )  # fmt: skip
    assert "NOAUTH" in refused, refused


def test_a_slack_mention_is_answered_too(
    cluster: ControlPlane, stack: dict[str, Any], fake_slack: slack.FakeSlack
) -> None:
    channel, ts = "C0HARBOUR", fake_slack.next_ts()
    fake_slack.send_envelope(slack.event_body(slack.mention(channel, "U0SAILOR", QUESTION, ts)))
    replies = eventually(
        lambda: [m for m in fake_slack.sent(channel) if m.thread == ts and "Sources:" in m.text],
        timeout=180,
        what="the Slack bot's answer in the thread",
    )
    assert replies[-1].text.split("\n\nSources:")[0].strip()


def connects(cluster: ControlPlane, pod: Any, host: str, port: int) -> bool:
    """Whether a TCP connection from inside `pod` to `host:port` is accepted."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout=5).close()\n"
        "except OSError as error:\n"
        "    sys.exit(f'refused: {error}')\n"
    )
    result = cluster.run_tool(
        "kubectl", "exec", "-n", pod.metadata.namespace, pod.metadata.name,
        "-c", pod.spec.containers[0].name, "--", "python", "-c", probe,
    )  # fmt: skip
    return result.returncode == 0


def bystander(cluster: ControlPlane, namespace: str) -> Any:
    """A pod of the workload image that only waits, in `namespace` (made if needed): a
    client the ChatBot's policies did not name."""
    api = core(cluster)
    try:
        api.create_namespace({"metadata": {"name": namespace}})
    except client.ApiException as error:
        if error.status != 409:
            raise
    context = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    api.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "bystander"},
            "spec": {
                "containers": [
                    {
                        "name": "wait",
                        "image": WORKLOAD_IMAGE,
                        "command": ["python", "-c", "import time; time.sleep(3600)"],
                        "securityContext": context,
                    }
                ]
            },
        },
    )
    return eventually(
        lambda: (
            (pod := api.read_namespaced_pod("bystander", namespace)).status.phase == "Running"
            and pod
        ),
        timeout=120,
        what=f"the bystander pod in {namespace}",
    )


def test_network_policies_let_each_component_be_reached_by_its_clients_alone(
    cluster: ControlPlane, stack: dict[str, Any]
) -> None:
    """Enforced by kube-router's policy controller on the real node: a bot (facing the
    platforms) opens the gateway and nothing else of the stack, not another bot; the
    gateway opens its stores; the scrapers read the metrics ports and not the API; a pod of
    any other namespace opens nothing."""
    service = lambda component, port: (f"{BOT}-{component}.{NAMESPACE}.svc", port)  # noqa: E731
    redis, model = service("memory", 6379), service("model", 8080)
    embeddings, weaviate = service("embeddings", 8080), service("knowledge-base", 8080)
    api, metrics = service("gateway", 8080), service("gateway", 9090)
    (telegram,) = pods(cluster, "telegram")
    (slack,) = pods(cluster, "slack")
    (gateway_pod,) = pods(cluster, "gateway")
    assert connects(cluster, telegram, *api)
    for closed in (redis, model, embeddings, weaviate, metrics):
        assert not connects(cluster, telegram, *closed), closed
    assert not connects(cluster, telegram, slack.status.pod_ip, 8081), "a bot reached a bot"
    for open_ in (redis, model, embeddings, weaviate):
        assert connects(cluster, gateway_pod, *open_), open_
    scraper = bystander(cluster, MONITORING)
    assert connects(cluster, scraper, *metrics)
    assert connects(cluster, scraper, *model)  # llama.cpp serves /metrics on its API port
    assert not connects(cluster, scraper, *api)
    assert not connects(cluster, scraper, *redis)
    outsider = bystander(cluster, "elsewhere")
    for closed in (api, metrics, model, redis):
        assert not connects(cluster, outsider, *closed), closed


def host_address() -> str:
    """The host's first global IPv4 address (not loopback), as a pod would try to reach it."""
    listing = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return listing.split()[3].split("/")[0]


def test_pods_reach_nothing_outside_the_nodes_network(
    cluster: ControlPlane, stack: dict[str, Any]
) -> None:
    """A server on the host's own address answers the host, not a pod: the node's network has
    no route out."""
    with socket.create_server((host_address(), 0)) as server:
        host, port = server.getsockname()[:2]
        socket.create_connection((host, port), timeout=5).close()
        (gateway_pod,) = pods(cluster, "gateway")
        assert not connects(cluster, gateway_pod, host, port)


def test_scaling_to_two_replicas_gives_two_model_pods_that_both_serve(
    cluster: ControlPlane, stack: dict[str, Any]
) -> None:
    run(cluster, "kubectl", "scale", "chatbot", BOT, "-n", NAMESPACE, "--replicas=2")
    models = eventually(
        lambda: len(ready := [p for p in pods(cluster, "model") if is_ready(p)]) == 2 and ready,
        READY_TIMEOUT,
        "two Ready model pods",
        interval=1,
    )
    assert {pod.spec.node_name for pod in models} == {NODE_NAME}
    # Each replica holds its weights in a claim of its own, downloaded into it once.
    claims = {
        pod.metadata.name: next(
            volume.persistent_volume_claim.claim_name
            for volume in pod.spec.volumes
            if volume.name == "cache"
        )
        for pod in models
    }
    assert len(set(claims.values())) == 2, claims
    for claim in claims.values():
        found = core(cluster).read_namespaced_persistent_volume_claim(claim, NAMESPACE)
        assert found.status.phase == "Bound"
        assert found.spec.access_modes == ["ReadWriteOnce"]
    eventually(
        lambda: chatbot(cluster)["status"]["model"]["readyReplicas"] == 2, 60, "readyReplicas 2"
    )
    # The gateway routes over both once its lookup lists them (the cluster DNS may answer
    # from its cache for a few seconds), as its metrics tell.
    eventually(
        lambda: (
            gateway_metric(cluster, "tertulia_gateway_backend_replicas")
            == 2 * gateway_ready_pods(cluster)
        ),
        60,
        "the gateway to route over both replicas",
        interval=1,
    )
    before = {
        pod.metadata.name: model_metric(cluster, pod, "prompt_tokens_total") for pod in models
    }
    # A client of its own: the admin key, bound to no platform's users.
    key = core(cluster).read_namespaced_secret(f"{BOT}-api-keys", NAMESPACE).data["admin"]
    headers = {"Authorization": f"Bearer {base64.b64decode(key).decode()}"}
    url = service_url(cluster, "gateway", 8080) + "/v1/chat/completions"

    def ask(index: int) -> int:
        body = {
            "model": BOT,
            "messages": [{"role": "user", "content": f"Say the number {index}."}],
            "max_tokens": 4,
            "user": f"load-{index}",
        }
        return httpx.post(url, json=body, headers=headers, timeout=120).status_code

    # Concurrent requests hold separate connections, which kube-proxy spreads over the pods.
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(ask, range(16)))
    assert statuses == [200] * 16
    served = {
        pod.metadata.name: model_metric(cluster, pod, "prompt_tokens_total")
        - before[pod.metadata.name]
        for pod in models
    }
    assert all(tokens > 0 for tokens in served.values()), served
    # Two replicas: a drain takes one at a time.
    assert budget_of(cluster, "model").spec.max_unavailable == 1


def budget_of(cluster: ControlPlane, component: str) -> Any:
    """The PodDisruptionBudget the ChatBot owns for `component`'s pods."""
    uid = chatbot(cluster)["metadata"]["uid"]
    found = client.PolicyV1Api(cluster.api_client()).list_namespaced_pod_disruption_budget(
        NAMESPACE, label_selector=INSTANCE
    )
    (budget,) = [
        item
        for item in found.items
        if item.spec.selector.match_labels.get("app.kubernetes.io/component") == component
        and [owner.uid for owner in item.metadata.owner_references] == [uid]
    ]
    return budget


def stream_answer(url: str, headers: dict[str, str], index: int) -> tuple[int, str, str]:
    """One streamed answer through the gateway's Service: its status, its last event and the
    text of its tokens."""
    body = {
        "model": BOT,
        "messages": [{"role": "user", "content": f"Describe harbour boat number {index}."}],
        "stream": True,
        "user": f"roll-{index}",
    }
    last, text = "", []
    with httpx.stream("POST", url, json=body, headers=headers, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            last = line.removeprefix("data: ")
            if last != "[DONE]":
                for choice in json.loads(last)["choices"]:
                    text.append(choice["delta"].get("content") or "")
        return response.status_code, last, "".join(text)


class Timeline:
    """When each step of a long test was reached, written beside the cluster's logs: where
    its time goes (and, for pods that linger, what they said)."""

    def __init__(self, path: Path) -> None:
        self.path, self.started = path, time.monotonic()
        path.write_text("")

    def mark(self, step: str) -> None:
        with self.path.open("a") as out:
            out.write(f"{time.monotonic() - self.started:7.1f} s  {step}\n")

    def logs(self, cluster: ControlPlane, pod: Any) -> None:
        said = cluster.run_tool(
            "kubectl", "logs", "-n", NAMESPACE, pod.metadata.name, "--tail", "15"
        )  # fmt: skip
        with self.path.open("a") as out:
            out.write(f"  {pod.metadata.name} still there, its last lines:\n{said.stdout}\n")


def test_a_gateway_rolled_while_20_answers_stream_finishes_them_and_a_drain_keeps_one_ready(
    cluster: ControlPlane, stack: dict[str, Any]
) -> None:
    custom = client.CustomObjectsApi(cluster.api_client())
    timeline = Timeline(cluster.workdir / "gateway-roll-timeline.txt")
    # The 20 answers queue on two CPU model servers sharing two cores with the other tiers'
    # servers, so the roll lands while they stream: longer answers than the stack's 48 tokens
    # (80, 160) outlasted the gateway's 120 s wait for a first token. The drain is sized for
    # the queue, as a user serving a slow model sets it.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, BOT,
        {"spec": {"gateway": {"replicas": 2, "maxTokens": 48, "drainSeconds": 300}}},
    )  # fmt: skip
    wait_observed(cluster, "the new settings")
    run(
        cluster, "kubectl", "rollout", "status", "-n", NAMESPACE,
        f"deployment/{BOT}-gateway", "--timeout=300s",
    )  # fmt: skip
    timeline.mark("two gateways rolled out on the new settings")
    eventually(
        lambda: gateway_ready_pods(cluster) == 2 and len(pods(cluster, "gateway")) == 2,
        READY_TIMEOUT,
        "two Ready gateways on the new settings",
        interval=1,
    )
    assert budget_of(cluster, "gateway").spec.max_unavailable == 1
    # The pods wait for their drain: its delay, the 300 s, and a margin.
    grace = {pod.spec.termination_grace_period_seconds for pod in pods(cluster, "gateway")}
    assert grace == {310}, grace
    key = core(cluster).read_namespaced_secret(f"{BOT}-api-keys", NAMESPACE).data["admin"]
    headers = {"Authorization": f"Bearer {base64.b64decode(key).decode()}"}
    url = service_url(cluster, "gateway", 8080) + "/v1/chat/completions"
    old = {pod.metadata.uid for pod in pods(cluster, "gateway")}

    # 20 answers streaming, then the gateway rolled as `kubectl rollout restart` does it.
    with ThreadPoolExecutor(20) as pool:
        answers = [pool.submit(stream_answer, url, headers, index) for index in range(20)]
        time.sleep(2)
        run(
            cluster, "kubectl", "rollout", "restart", "-n", NAMESPACE,
            f"deployment/{BOT}-gateway",
        )  # fmt: skip
        # The roll landed mid-way: an old pod was stopping while answers were still streaming.
        eventually(
            lambda: any(
                pod.metadata.uid in old and pod.metadata.deletion_timestamp
                for pod in pods(cluster, "gateway")
            ),
            READY_TIMEOUT,
            "an old gateway pod to be stopping",
            interval=0.5,
        )
        assert sum(answer.done() for answer in answers) < 20
        timeline.mark("an old gateway stopping while answers stream")
        results = [answer.result() for answer in answers]
    timeline.mark("every answer done")
    for pod in pods(cluster, "gateway"):
        if pod.metadata.uid in old:
            timeline.logs(cluster, pod)
    for status, last, text in results:
        assert (status, last) == (200, "[DONE]")
        assert text.strip()
    run(
        cluster, "kubectl", "rollout", "status", "-n", NAMESPACE,
        f"deployment/{BOT}-gateway", "--timeout=300s",
    )  # fmt: skip
    timeline.mark("the roll complete")
    # The old pods, done with their answers, exit.
    eventually(
        lambda: not old & {pod.metadata.uid for pod in pods(cluster, "gateway")},
        180,
        "the old gateway pods to exit",
        interval=1,
    )
    timeline.mark("the old gateways gone")

    # A node drain of the gateways: the budget lets one go at a time, and its replacement has
    # nowhere to run (the only node is cordoned), so the other stays, Ready, to the end.
    before_drain = {pod.metadata.uid for pod in pods(cluster, "gateway")}
    with ready_gateways(cluster) as samples:
        drained = cluster.run_tool(
            "kubectl", "drain", NODE_NAME,
            "--pod-selector", f"{INSTANCE},app.kubernetes.io/component=gateway",
            "--delete-emptydir-data", "--ignore-daemonsets", "--timeout=15s",
        )  # fmt: skip
        run(cluster, "kubectl", "uncordon", NODE_NAME)
    timeline.mark("the drain refused by the budget")
    assert drained.returncode != 0, drained.stdout
    assert "disruption budget" in drained.stderr + drained.stdout
    assert len(samples) > 20
    assert min(samples) >= 1, f"no Ready gateway at some point: {samples}"
    # One was evicted: the drain really ran.
    assert len(before_drain & {pod.metadata.uid for pod in pods(cluster, "gateway")}) == 1
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, BOT,
        {"spec": {"gateway": {"replicas": 1, "maxTokens": 48, "drainSeconds": None}}},
    )  # fmt: skip
    # The drain's replacement had only just started when this roll stopped it: it exits at
    # once, well within its 310 s grace period (as PID 1, a Python that did not yet handle
    # SIGTERM ignored it, and the pod waited out the whole period: the images run tini).
    eventually(
        lambda: len(pods(cluster, "gateway")) == 1 and gateway_ready_pods(cluster) == 1,
        120,
        "one Ready gateway, the others gone within their grace period",
        interval=1,
    )
    timeline.mark("one gateway left")
    # One replica: no budget to block the next drain.
    with pytest.raises(ValueError):
        budget_of(cluster, "gateway")


# The annotation `kubectl rollout restart` sets on a workload's pod template.
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


def test_a_model_rolled_mid_answer_finishes_it_and_the_next_turn_is_answered(
    cluster: ControlPlane, stack: dict[str, Any], fake_telegram: telegram.FakeTelegram
) -> None:
    chat = random.randint(10_000_000, 99_999_999)
    first = ask_on_telegram(fake_telegram, chat, chat, QUESTION)
    assert first.answer
    # The pod the rollout stops first: a StatefulSet rolls its pods from the highest ordinal
    # down, one at a time (with two replicas, the lower one stops only after the higher one
    # is back, long after any answer).
    victim = max(
        (pod for pod in pods(cluster, "model") if is_ready(pod)),
        key=lambda pod: int(pod.metadata.name.rsplit("-", 1)[1]),
    )
    # A long answer streamed from the replica itself (the gateway's maxTokens here is short),
    # every token of it whatever the model thinks of stopping: short enough to end within
    # the pod's drain (30 s after its 15 s delay) at a few dozen tokens a second.
    host, port = cluster.reachable(victim.status.pod_ip, 8080)
    asked = 800
    body = {
        "model": chatbot(cluster)["status"]["model"]["name"],
        "messages": [{"role": "user", "content": "Count from one to a thousand in words."}],
        "max_tokens": asked,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    arrivals: list[float] = []
    outcome: dict[str, Any] = {}

    def stream() -> None:
        try:
            with httpx.stream(
                "POST", f"http://{host}:{port}/v1/chat/completions", json=body, timeout=300
            ) as response:
                outcome["status"] = response.status_code
                for line in response.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line.removeprefix("data: "))
                    for choice in chunk.get("choices") or []:
                        if choice["delta"].get("content"):
                            arrivals.append(time.monotonic())
                        outcome["finish"] = choice.get("finish_reason") or outcome.get("finish")
        except httpx.HTTPError as error:
            outcome["error"] = f"{type(error).__name__}: {error}"

    streaming = threading.Thread(target=stream, daemon=True)
    streaming.start()
    eventually(lambda: arrivals, 60, "the answer's first words", interval=0.05)
    # A rollout, as an upgrade or a changed spec makes one: the pod is deleted and replaced.
    # Made as `kubectl rollout restart` makes it (a new template annotation), through the API
    # at once: a kubectl started on a busy machine took longer than the answer.
    restarted = datetime.now(UTC).isoformat()
    client.AppsV1Api(cluster.api_client()).patch_namespaced_stateful_set(
        f"{BOT}-model",
        NAMESPACE,
        {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted}}}}},
    )

    def stopping() -> bool:
        found = [p for p in pods(cluster, "model") if p.metadata.uid == victim.metadata.uid]
        return not found or found[0].metadata.deletion_timestamp is not None

    eventually(stopping, 30, "the model pod to be stopping", interval=0.1)
    stopping_seen = time.monotonic()
    streaming.join(timeout=300)
    print(
        f"rolled mid-answer: {len(arrivals)} pieces, {arrivals[-1] - stopping_seen:.1f} s of "
        "them after the pod began to stop"
    )
    # Every word, to the end: the pod left its Services at once but served on, and its
    # preStop held the engine's SIGTERM until the answer was done.
    assert outcome.get("status") == 200 and "error" not in outcome, outcome
    assert outcome.get("finish") == "length", outcome
    assert len(arrivals) >= asked * 0.9, f"{len(arrivals)} of {asked} tokens"
    assert arrivals[-1] > stopping_seen, "the answer ended before the pod began to stop"
    # The next turn is answered by the replica that replaced it, with the conversation.
    second = ask_on_telegram(fake_telegram, chat, chat, "And how much is a ticket?")
    assert second.answer
    assert second.sources
    turns = remembered(cluster, second)
    assert [turn["role"] for turn in turns] == ["user", "assistant"] * 2
    assert turns[-1]["content"].strip() == second.answer


def test_a_conversation_outlives_its_redis_pod(
    cluster: ControlPlane, stack: dict[str, Any], fake_telegram: telegram.FakeTelegram
) -> None:
    chat = random.randint(10_000_000, 99_999_999)
    questions = [
        QUESTION,
        "How much is a ticket?",
        "Where are tickets sold?",
        "Where do cars park?",
        "When does the car park close?",
    ]
    for question in questions:
        assert ask_on_telegram(fake_telegram, chat, chat, question).answer
    (victim,) = pods(cluster, "memory")
    core(cluster).delete_namespaced_pod(victim.metadata.name, NAMESPACE)
    # A new Redis, Ready, in place of the deleted one.
    eventually(
        lambda: (
            [
                pod.metadata.uid != victim.metadata.uid and is_ready(pod)
                for pod in pods(cluster, "memory")
            ]
            == [True]
        ),
        240,
        "a new Redis pod to be Ready",
    )

    sixth = ask_on_telegram(fake_telegram, chat, chat, "Thank you. What did I ask first?")

    assert sixth.answer
    turns = remembered(cluster, sixth)
    assert [turn["content"] for turn in turns[0::2]] == [*questions, sixth.question]
    assert turns[-1]["content"].strip() == sixth.answer


def condition(cluster: ControlPlane, kind: str) -> dict[str, Any]:
    conditions = chatbot(cluster).get("status", {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def test_a_document_that_cannot_be_read_fails_the_ingest_and_says_so_in_the_status(
    cluster: ControlPlane, stack: dict[str, Any]
) -> None:
    broken = base64.b64encode(b"%PDF-1.7 this is not a PDF at all").decode()
    api = core(cluster)
    api.patch_namespaced_config_map(
        "harbour-docs", NAMESPACE, {"binaryData": {"broken.pdf": broken}}
    )
    failed = eventually(
        lambda: (
            (found := condition(cluster, "KnowledgeBaseReady")).get("reason") == "IngestFailed"
            and found
        ),
        READY_TIMEOUT,
        "KnowledgeBaseReady to say the ingest failed",
        interval=1,
    )
    assert failed["status"] == "False"
    # What the Job's Pod said: the file it could not read.
    assert "broken.pdf" in failed["message"], failed["message"]
    assert chatbot(cluster)["status"]["phase"] == "Degraded"
    jobs = client.BatchV1Api(cluster.api_client()).list_namespaced_job(
        NAMESPACE, label_selector=f"{INSTANCE},app.kubernetes.io/component=ingest"
    )
    (job,) = [job for job in jobs.items if job.metadata.name in failed["message"]]
    # Failed at once: a document no retry reads better.
    assert job.status.failed == 1
    api.patch_namespaced_config_map(
        "harbour-docs", NAMESPACE, [{"op": "remove", "path": "/binaryData"}]
    )
    wait_ready(cluster)
    assert condition(cluster, "KnowledgeBaseReady")["status"] == "True"


def patch_model(cluster: ControlPlane, model: dict[str, Any]) -> None:
    client.CustomObjectsApi(cluster.api_client()).patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, BOT, {"spec": {"model": model}}
    )


def model_says(cluster: ControlPlane, reason: str) -> dict[str, Any]:
    found: dict[str, Any] = eventually(
        lambda: (found := condition(cluster, "ModelReady")).get("reason") == reason and found,
        READY_TIMEOUT,
        f"ModelReady to say {reason}",
        interval=1,
    )
    return found


def roll_back_model(cluster: ControlPlane, model: dict[str, Any]) -> None:
    """The spec put back, and the pods the StatefulSet made from the broken one deleted: a
    StatefulSet waits for a broken pod forever (Kubernetes' "forced rollback")."""
    patch_model(cluster, model)
    wait_observed(cluster, "the rollback")
    for pod in pods(cluster, "model"):
        if not is_ready(pod):
            try:
                core(cluster).delete_namespaced_pod(pod.metadata.name, NAMESPACE)
            except client.ApiException as error:
                # The StatefulSet may have replaced it between the list and the delete.
                if error.status != 404:
                    raise
    wait_ready(cluster)


def test_a_model_server_that_crashes_or_cannot_be_pulled_says_why_in_the_status(
    cluster: ControlPlane, stack: dict[str, Any]
) -> None:
    # An argument llama-server does not know: it prints why, and exits 1, on every start.
    patch_model(cluster, {"args": ["--no-such-flag"]})
    crashing = model_says(cluster, "CrashLoopBackOff")
    assert crashing["status"] == "False"
    # Its last words, as its termination message: llama-server's own.
    assert crashing["message"].endswith("error: invalid argument: --no-such-flag")
    assert "exit code 1" in crashing["message"]
    assert condition(cluster, "Ready")["reason"] == "CrashLoopBackOff"
    warned = [
        event
        for event in core(cluster)
        .list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={BOT}")
        .items
        if event.reason == "CrashLoopBackOff"
    ]
    assert warned and warned[0].type == "Warning"
    roll_back_model(cluster, {"args": None})

    # An image no registry serves: the node cannot reach one at all.
    missing = "ghcr.io/ggml-org/llama.cpp:server-no-such-tag"
    patch_model(cluster, {"image": missing})
    pulling = model_says(cluster, "ImagePullFailed")
    assert f"cannot pull {missing}" in pulling["message"]
    roll_back_model(cluster, {"image": None})


def gateway_ready_pods(cluster: ControlPlane) -> int:
    return sum(1 for pod in pods(cluster, "gateway") if is_ready(pod))


@contextlib.contextmanager
def ready_gateways(cluster: ControlPlane) -> Iterator[list[int]]:
    """The number of Ready gateway pods, sampled four times a second while the block runs."""
    samples: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            samples.append(gateway_ready_pods(cluster))
            time.sleep(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield samples
    finally:
        stop.set()
        watcher.join()


def test_helm_upgrade_to_a_new_operator_image_keeps_a_gateway_ready_throughout(
    cluster: ControlPlane, stack: dict[str, Any]
) -> None:
    assert cluster.node is not None
    new_tag = "0.1.0-upgrade"
    for repository in ("ghcr.io/tertulia/operator", "ghcr.io/tertulia/tertulia"):
        cluster.node.ctr(
            "images", "tag", "--force", f"{repository}:0.1.0", f"{repository}:{new_tag}"
        )
    with ready_gateways(cluster) as samples:
        run(
            cluster, "helm", "upgrade", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE,
            "--reuse-values",
            "--set", f"image.tag={new_tag}", "--set", f"workloadImage.tag={new_tag}",
            "--wait", "--timeout", "180s",
        )  # fmt: skip

        def converged() -> bool:
            gateways = pods(cluster, "gateway")
            return bool(gateways) and all(
                is_ready(p) and p.spec.containers[0].image.endswith(f":{new_tag}") for p in gateways
            )

        eventually(converged, READY_TIMEOUT, "the gateway on the new image", interval=1)
        wait_ready(cluster)
    assert len(samples) > 20
    assert min(samples) >= 1, f"no Ready gateway at some point: {samples}"
    # The ingest Job runs again from the new image, and finishes.

    def ingest_images() -> dict[str | None, int | None]:
        jobs = client.BatchV1Api(cluster.api_client()).list_namespaced_job(
            NAMESPACE, label_selector=f"{INSTANCE},app.kubernetes.io/component=ingest"
        )
        return {
            job.spec.template.spec.containers[0].image: job.status.succeeded for job in jobs.items
        }

    new_image = f"ghcr.io/tertulia/tertulia:{new_tag}"
    try:
        eventually(lambda: ingest_images().get(new_image) == 1, 240, "the new ingest Job")
    except TimeoutError as error:
        operator_log = cluster.run_tool(
            "kubectl", "logs", "-n", OPERATOR_NAMESPACE, f"deployment/{RELEASE}", "--tail", "40"
        ).stdout  # fmt: skip
        raise AssertionError(f"{error}: {ingest_images()}\n{operator_log}") from None


def patch_knowledge_base(cluster: ControlPlane, knowledge: dict[str, Any]) -> None:
    client.CustomObjectsApi(cluster.api_client()).patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, BOT, {"spec": {"knowledgeBase": knowledge}}
    )


def test_a_knowledge_base_of_two_nodes_keeps_answering_with_either_node_deleted(
    cluster: ControlPlane, stack: dict[str, Any]
) -> None:
    # A knowledge base's nodes are set when it is made: off, its volume gone, on with two.
    api = core(cluster)
    patch_knowledge_base(cluster, {"enabled": False})
    eventually(lambda: not pods(cluster, "knowledge-base"), 180, "Weaviate to go", interval=1)
    api.delete_collection_namespaced_persistent_volume_claim(
        NAMESPACE, label_selector=f"{INSTANCE},app.kubernetes.io/component=knowledge-base"
    )
    patch_knowledge_base(cluster, {"enabled": True, "replicas": 2})
    wait_observed(cluster, "two knowledge base nodes")
    wait_ready(cluster)
    nodes = pods(cluster, "knowledge-base")
    assert sorted(pod.metadata.name for pod in nodes) == [
        f"{BOT}-knowledge-base-{i}" for i in (0, 1)
    ]
    assert all(is_ready(pod) for pod in nodes)
    run(
        cluster, "kubectl", "wait", "-n", NAMESPACE, "job", "-l",
        f"{INSTANCE},app.kubernetes.io/component=ingest",
        "--for=condition=Complete", "--timeout=300s",
    )  # fmt: skip
    key = api.read_namespaced_secret(f"{BOT}-api-keys", NAMESPACE).data["admin"]
    headers = {"Authorization": f"Bearer {base64.b64decode(key).decode()}"}
    url = service_url(cluster, "gateway", 8080) + "/admin/knowledge/search"

    failed: list[str] = []

    def search() -> list[tuple[str, int]] | None:
        """The passages found, or None (and the reason kept) when the search failed."""
        found = httpx.post(url, json={"query": QUESTION}, headers=headers, timeout=60)
        if found.status_code != 200:
            failed.append(found.text)
            return None
        return [(hit["source"], hit["chunk_index"]) for hit in found.json()]

    before = search()
    assert before and before[0][0].endswith("guide.md"), before
    endpoints = client.DiscoveryV1Api(cluster.api_client())

    def serving() -> set[str]:
        """The Weaviate pods the knowledge base's Service sends searches to."""
        slices = endpoints.list_namespaced_endpoint_slice(
            NAMESPACE, label_selector=f"kubernetes.io/service-name={BOT}-knowledge-base"
        )
        return {
            str(endpoint.target_ref.name)
            for found in slices.items
            for endpoint in found.endpoints or []
            if endpoint.conditions.ready
        }

    def only(name: str) -> bool:
        return serving() == {name}

    for gone, left in ((0, 1), (1, 0)):
        victim, other = f"{BOT}-knowledge-base-{gone}", f"{BOT}-knowledge-base-{left}"
        api.delete_namespaced_pod(victim, NAMESPACE, grace_period_seconds=0)
        # The search runs while the node is away: only the other one serves.
        eventually(partial(only, other), 60, f"{victim} to be away")
        # The moment a node goes, a search on a connection to it, or sent before the
        # Service's rules move, may fail once; then the other node answers the same.
        failed.clear()
        assert eventually(search, 30, f"a search while {victim} is away") == before
        assert len(failed) <= 2, failed
        assert victim not in serving(), "the node came back before the search ended"
        eventually(lambda: len(serving()) == 2, READY_TIMEOUT, f"{victim} to return", interval=1)


HA_BOT = "lighthouse"


def sentinel_says(cluster: ControlPlane, pod: str) -> str:
    """The pod whose Redis the Sentinel in `pod` names the primary; empty while that
    Sentinel cannot be asked (its pod starting again)."""
    said = cluster.run_tool(
        "kubectl", "exec", "-n", NAMESPACE, pod, "-c", "sentinel", "--",
        "redis-cli", "-p", "26379", "sentinel", "get-master-addr-by-name", "memory",
    ).stdout.split()  # fmt: skip
    return said[0].split(".")[0] if said else ""


def test_a_redis_with_sentinels_keeps_the_conversation_when_its_primary_pod_is_deleted(
    cluster: ControlPlane, operator: None, namespace: str, fake_model: str
) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ChatBot",
        "metadata": {"name": HA_BOT, "namespace": NAMESPACE},
        "spec": {
            "model": {"engine": "endpoint", "endpoint": fake_model},
            # Small requests: the module's main stack still holds most of the node.
            "gateway": {
                # Turns go on every 0.3 s through the rolling restart below.
                "rateLimit": {"requestsPerMinute": 6000, "burst": 100},
                "memory": {
                    "replicas": 3,
                    "storage": "100Mi",
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "32Mi"},
                        "limits": {"memory": "128Mi"},
                    },
                },
            },
            "knowledgeBase": {"enabled": False},
        },
    }
    run(cluster, "kubectl", "apply", "-f", "-", stdin=yaml.safe_dump(body))
    wait_ready(cluster, name=HA_BOT)
    selector = f"app.kubernetes.io/instance={HA_BOT},app.kubernetes.io/component=memory"
    memory = core(cluster).list_namespaced_pod(NAMESPACE, label_selector=selector).items
    assert len(memory) == 3 and all(is_ready(pod) for pod in memory)
    names = sorted(str(pod.metadata.name) for pod in memory)
    assert {sentinel_says(cluster, name) for name in names} == {f"{HA_BOT}-memory-0"}

    key = core(cluster).read_namespaced_secret(f"{HA_BOT}-api-keys", NAMESPACE).data["admin"]
    headers = {"Authorization": f"Bearer {base64.b64decode(key).decode()}"}
    service = core(cluster).read_namespaced_service(f"{HA_BOT}-gateway", NAMESPACE)
    host, port = cluster.reachable(service.spec.cluster_ip, 8080)
    url = f"http://{host}:{port}"
    for turn in range(1, 6):
        body = {"message": f"turn {turn}", "conversation_id": "kept"}
        answered = httpx.post(f"{url}/chat", json=body, headers=headers, timeout=60)
        assert (answered.status_code, answered.json()["notice"]) == (200, None), answered.text
    primary = f"{HA_BOT}-memory-0"
    # Both replicas have every write so far before the primary goes.
    acknowledged = run(
        cluster, "kubectl", "exec", "-n", NAMESPACE, primary, "-c", "redis", "--",
        "redis-cli", "WAIT", "2", "5000",
    )  # fmt: skip
    assert acknowledged.strip() == "2"
    # The image's Redis is of the line the operator pins (the stand-in's, built as upstream).
    server = run(
        cluster, "kubectl", "exec", "-n", NAMESPACE, primary, "-c", "redis", "--",
        "redis-cli", "INFO", "server",
    )  # fmt: skip
    pinned = REDIS.split(":")[1].split("-")[0].rsplit(".", 1)[0]
    assert f"redis_version:{pinned}." in server, server
    # The node cordoned, the deleted pod stays away until a replica is promoted (back
    # within the Sentinels' down-after time, 15 s, it would simply be the primary again).
    run(cluster, "kubectl", "cordon", NODE_NAME)
    try:
        core(cluster).delete_namespaced_pod(primary, NAMESPACE, grace_period_seconds=0)
        promoted = eventually(
            lambda: (
                (said := sentinel_says(cluster, f"{HA_BOT}-memory-1")) not in ("", primary) and said
            ),
            120,
            "the Sentinels to promote a replica",
            interval=1,
        )
    finally:
        run(cluster, "kubectl", "uncordon", NODE_NAME)
    assert promoted in {f"{HA_BOT}-memory-1", f"{HA_BOT}-memory-2"}
    # The sixth turn reaches the new primary (after a short outage, a 503 or a notice) and
    # the conversation has the first five.
    sixth = {"message": "turn 6", "conversation_id": "kept"}
    eventually(
        lambda: (
            (
                answered := httpx.post(f"{url}/chat", json=sixth, headers=headers, timeout=60)
            ).status_code
            == 200
            and answered.json()["notice"] is None
        ),
        120,
        "the sixth turn answered with memory",
        interval=2,
    )
    turns = httpx.get(f"{url}/conversations/kept", headers=headers, timeout=10).json()["turns"]
    assert [t["content"] for t in turns if t["role"] == "user"] == [
        f"turn {turn}" for turn in range(1, 7)
    ]
    # The deleted pod comes back as a replica of the new primary.
    eventually(
        lambda: sentinel_says(cluster, primary) == promoted,
        READY_TIMEOUT,
        "the deleted pod to follow the new primary",
        interval=2,
    )

    def role() -> str:
        """What the pod's own Redis says it is ("" while it takes no connections)."""
        result = cluster.run_tool(
            "kubectl", "exec", "-n", NAMESPACE, primary, "-c", "redis", "--",
            "redis-cli", "ROLE",
        )  # fmt: skip
        return result.stdout if result.returncode == 0 else ""

    # Its Redis may take connections a moment after its Sentinel has it follow.
    try:
        eventually(lambda: role().startswith("slave"), 60, "the pod's Redis a replica", interval=2)
    except TimeoutError:
        logs = [container_log(cluster, primary, c) for c in ("redis", "sentinel")]
        raise AssertionError("\n".join([role(), *logs])) from None

    # A rolling restart of every pod, the primary's included, while turns go on: each is
    # answered with its memory and stored, since a primary that stops hands over first.
    kept_turns: list[tuple[str, int, str | None]] = []
    rolling = threading.Event()

    def converse() -> None:
        turn = 0
        while not rolling.is_set():
            turn += 1
            ask = {"message": f"rolling {turn}", "conversation_id": f"rolling-{turn}"}
            reply = httpx.post(f"{url}/chat", json=ask, headers=headers, timeout=60)
            notice = reply.json().get("notice") if reply.status_code == 200 else reply.text
            kept_turns.append((f"rolling-{turn}", reply.status_code, notice))
            time.sleep(0.3)

    primaries: list[str] = []

    def watch() -> None:
        """Which server the Sentinels name the primary, every second of the restart."""
        while not rolling.is_set():
            for pod in (f"{HA_BOT}-memory-{i}" for i in range(3)):
                if said := sentinel_says(cluster, pod):
                    if not primaries or primaries[-1] != said:
                        primaries.append(said)
                    break
            time.sleep(1)

    writer = threading.Thread(target=converse, daemon=True)
    watcher = threading.Thread(target=watch, daemon=True)
    writer.start()
    watcher.start()
    try:
        time.sleep(2)
        restarted = time.monotonic()
        run(cluster, "kubectl", "rollout", "restart", "statefulset", f"{HA_BOT}-memory",
            "-n", NAMESPACE)  # fmt: skip
        run(cluster, "kubectl", "rollout", "status", "statefulset", f"{HA_BOT}-memory",
            "-n", NAMESPACE, "--timeout=300s")  # fmt: skip
        took = time.monotonic() - restarted
        during = len(kept_turns)
        time.sleep(2)
    finally:
        rolling.set()
        writer.join(timeout=90)
        watcher.join(timeout=30)
    print(f"rolling restart: {took:.0f} s, {len(kept_turns)} turns, primaries {primaries}")
    # The primary's pod was restarted too, so the primary moved (at least once), and turns
    # went on through the whole restart.
    assert len(primaries) >= 2, primaries
    assert during >= took / 2, f"{during} turns in {took:.0f} s: the writer stalled"
    # Each primary that stopped handed over first (its words are kept on its claim).
    handovers = {
        name: cluster.run_tool(
            "kubectl", "exec", "-n", NAMESPACE, name, "-c", "redis", "--",
            "cat", "/data/handover.log",
        ).stdout
        for name in (f"{HA_BOT}-memory-{i}" for i in range(3))
    }  # fmt: skip
    print(f"handovers: {handovers}")
    handed = [name for name, said in handovers.items() if "handed the primary over" in said]
    assert len(handed) >= len(primaries) - 1, handovers
    assert not any("stopping as the primary" in said for said in handovers.values()), handovers
    # No turn refused, none answered without its memory, and none lost: each is stored.
    assert all(status == 200 for _, status, _ in kept_turns), kept_turns
    forgotten = [(conversation, notice) for conversation, _, notice in kept_turns if notice]
    print(f"answered without memory: {len(forgotten)} of {len(kept_turns)}")
    assert not forgotten, forgotten
    lost = []
    for conversation, _, _ in kept_turns:
        stored = httpx.get(f"{url}/conversations/{conversation}", headers=headers, timeout=10)
        said = [t["content"] for t in stored.json().get("turns", []) if t["role"] == "user"]
        if (stored.status_code, said) != (200, [f"rolling {conversation.split('-')[1]}"]):
            lost.append(conversation)
    assert not lost, (lost, handovers)
    run(cluster, "kubectl", "delete", "chatbot", HA_BOT, "-n", NAMESPACE, "--wait=true")


def gateway_metric(cluster: ControlPlane, name: str) -> float:
    """A gateway counter summed over its pods, read from each pod's metrics port."""
    total = 0.0
    for pod in pods(cluster, "gateway"):
        if not is_ready(pod):
            continue
        host, port = cluster.reachable(pod.status.pod_ip, 9090)
        for line in httpx.get(f"http://{host}:{port}/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_an_idle_model_scales_to_zero_and_held_requests_wake_it(
    cluster: ControlPlane, stack: dict[str, Any]
) -> None:
    patch_model(
        cluster,
        {
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 2,
                "targetInFlight": 4,
                "scaleDownDelaySeconds": 10,
            }
        },
    )
    # Idle: the gateway (rolled onto its new settings) scales the model to zero after the
    # delay, through the scale subresource, with its own ServiceAccount's rights.
    eventually(
        lambda: chatbot(cluster)["spec"]["model"]["replicas"] == 0 and not pods(cluster, "model"),
        READY_TIMEOUT,
        "the idle model to scale to zero",
        interval=1,
    )
    idle = chatbot(cluster)
    assert "no requests for 10 s" in idle["status"]["autoscaling"]["reason"]
    model = condition(cluster, "ModelReady")
    assert (model["status"], model["reason"]) == ("True", "ScaledToZero"), model
    # The gateway stays in service at zero replicas: the ChatBot is Ready.
    wait_ready(cluster)
    woken_before = sum(
        gateway_metric(cluster, f'tertulia_gateway_scale_events_total{{direction="{way}"}}')
        for way in ("wake", "up")
    )

    key = core(cluster).read_namespaced_secret(f"{BOT}-api-keys", NAMESPACE).data["admin"]
    headers = {"Authorization": f"Bearer {base64.b64decode(key).decode()}"}
    gateway = service_url(cluster, "gateway", 8080)
    url = gateway + "/v1/chat/completions"

    def asleep() -> bool:
        """What the gateway tells a bot whose answer is slow to begin."""
        said = httpx.get(f"{gateway}/model/state", headers=headers, timeout=10)
        assert said.status_code == 200, said.text
        return bool(said.json()["asleep"])

    assert asleep()

    def ask(index: int) -> tuple[int, str, float]:
        """A streamed answer: its status, its text, and when its first token came."""
        body = {
            "model": BOT,
            "messages": [{"role": "user", "content": f"Say hello to boat {index}."}],
            "max_tokens": 8,
            "user": f"wake-{index}",
        }
        return streamed_answer(url, headers, body)

    asked = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    # None lost, none refused: each held until the woken replica was ready, then answered
    # by the model.
    if [status for status, _, _ in answers] != [200] * 6:
        logs = [
            container_log(cluster, p.metadata.name, "gateway") for p in pods(cluster, "gateway")
        ]
        raise AssertionError(f"{answers}\n" + "\n".join(log[-3000:] for log in logs))
    assert all(text.strip() for _, text, _ in answers), answers
    # Each gateway lists the woken replica within its lookups' period.
    eventually(lambda: not asleep(), 30, "the gateway to say the model is awake", interval=1)
    # The woken replica (six requests at four per replica then asked for a second one).
    pod = min(pods(cluster, "model"), key=lambda found: found.metadata.creation_timestamp)
    ready_at = next(c for c in pod.status.conditions if c.type == "Ready").last_transition_time
    start_to_ready = (ready_at - pod.metadata.creation_timestamp).total_seconds()
    first_token = min(at for _, _, at in answers) - asked
    asked_at = time.time() - (time.monotonic() - asked)
    created = pod.metadata.creation_timestamp.timestamp() - asked_at
    print(
        f"woken: pod created {created:.1f} s after the requests, Ready {start_to_ready:.1f} s "
        f"later; first token {first_token:.1f} s after the requests"
    )
    # Scaled from zero by the gateway: by the request it held (a wake), or by the leader's
    # round that counted the held requests first (up).
    woken = sum(
        gateway_metric(cluster, f'tertulia_gateway_scale_events_total{{direction="{way}"}}')
        for way in ("wake", "up")
    )
    assert woken > woken_before, "the gateway did not scale the model from zero"
    waited = gateway_metric(cluster, 'tertulia_gateway_queue_wait_seconds_count{outcome="served"}')
    assert waited >= 1

    # Idle again: back to zero once the delay has passed.
    eventually(
        lambda: chatbot(cluster)["spec"]["model"]["replicas"] == 0 and not pods(cluster, "model"),
        120,
        "the model to scale back to zero",
        interval=1,
    )
    patch_model(cluster, {"autoscaling": None, "replicas": 1})
    wait_ready(cluster)


def test_deleting_the_chatbot_removes_every_pod(
    cluster: ControlPlane, stack: dict[str, Any]
) -> None:
    run(cluster, "kubectl", "delete", "chatbot", BOT, "-n", NAMESPACE, "--wait=false")
    started, last_seen = time.monotonic(), {}

    def gone() -> bool:
        remaining = pods(cluster)
        for pod in remaining:
            last_seen[pod.metadata.name] = round(time.monotonic() - started, 1)
        return not remaining

    eventually(gone, 180, "every pod of the ChatBot to go", interval=1)
    # When each pod was last seen: which one a slow deletion waits for.
    print(f"pods last seen (s after the delete): {last_seen}")
    apps = client.AppsV1Api(cluster.api_client())
    assert not apps.list_namespaced_deployment(NAMESPACE, label_selector=INSTANCE).items
    assert not apps.list_namespaced_stateful_set(NAMESPACE, label_selector=INSTANCE).items
    # The model's claims went with it; Weaviate's data is kept, as its StatefulSet's are.
    model_claims = f"{INSTANCE},app.kubernetes.io/component=model"
    eventually(
        lambda: (
            not core(cluster)
            .list_namespaced_persistent_volume_claim(NAMESPACE, label_selector=model_claims)
            .items
        ),
        60,
        "the model's cache claims to go",
    )
