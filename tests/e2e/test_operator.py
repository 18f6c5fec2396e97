"""The operator against the real control plane: examples become Ready stacks on the right
nodes, scale with kubectl, heal drift, wait for Secrets, survive restarts, and invalid
ChatBots are refused at admission with the field named.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from tertulia.operator.crd import chatbot_crd
from tests.examples import chatbot_document, companions
from tests.testbed.kube import GPU_RESOURCE, ControlPlane
from tests.testbed.process import ManagedProcess, eventually
from tests.testbed.servers import start_operator

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
GROUP, VERSION, PLURAL = "tertulia.dev", "v1alpha1", "chatbots"
READY_TIMEOUT = 90.0

# What each example's comments say to create first.
EXAMPLE_SECRETS: dict[str, dict[str, dict[str, str]]] = {
    "cpu-ollama": {},
    "vllm-gpu-slack-kb": {
        "hf-token": {"token": "hf_e2eSecretHuggingFace0001"},
        "slack": {"bot-token": "xoxb-e2e-secret-0002", "app-token": "xapp-e2e-secret-0003"},
    },
    "all-platforms": {
        "slack": {"bot-token": "xoxb-e2e-secret-0004", "signing-secret": "e2e-signing-0005"},
        "discord": {"token": "e2e-discord-secret-0006"},
        "telegram": {"token": "1:e2e-telegram-secret-0007", "webhook-secret": "e2e-hook-0008"},
    },
    "external-endpoint": {
        "llm-endpoint": {"api-key": "e2e-endpoint-secret-0009"},
        "discord": {"token": "e2e-discord-secret-0010"},
    },
}


class Operator:
    """`tertulia operator run` as its own process, restartable."""

    def __init__(
        self, control_plane: ControlPlane, logs: Path, env: dict[str, str] | None = None
    ) -> None:
        self.control_plane = control_plane
        self.logs = logs
        self.env = env
        self.process: ManagedProcess | None = None

    def start(self) -> None:
        self.process = start_operator(self.control_plane.kubeconfig, self.logs, env=self.env)

    def kill(self) -> None:
        assert self.process is not None
        self.process.popen.send_signal(signal.SIGKILL)
        self.process.popen.wait()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    control_plane.install_crd(chatbot_crd())
    # A refused child is tried again after 5 s rather than a minute: the tests that refuse
    # one wait for that retry, and what they prove does not depend on its length.
    running = Operator(
        control_plane,
        tmp_path_factory.mktemp("operator"),
        env={"TERTULIA_OPERATOR_REFUSED_RETRY_SECONDS": "5"},
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane, operator: Operator) -> Iterator[str]:
    with fresh_namespace(control_plane, "bots") as name:
        yield name


@contextmanager
def fresh_namespace(control_plane: ControlPlane, prefix: str) -> Iterator[str]:
    """A namespace of its own for one test, named PREFIX-RANDOM, deleted after it."""
    core = client.CoreV1Api(control_plane.api_client())
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def kubectl(
    control_plane: ControlPlane, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return control_plane.run_tool("kubectl", *args, stdin=stdin, check=check)


def create_secrets(
    control_plane: ControlPlane, namespace: str, secrets: dict[str, dict[str, str]]
) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    for name, data in secrets.items():
        core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "stringData": data})


def load_example(name: str) -> dict[str, Any]:
    return chatbot_document(EXAMPLES / f"{name}.yaml")


def chatbot(control_plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    api = client.CustomObjectsApi(control_plane.api_client())
    return cast(
        dict[str, Any], api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    )


def wait_phase(
    control_plane: ControlPlane, namespace: str, name: str, phase: str = "Ready"
) -> dict[str, Any]:
    try:
        found: dict[str, Any] = eventually(
            lambda: (
                (body := chatbot(control_plane, namespace, name)).get("status", {}).get("phase")
                == phase
                and body
            ),
            timeout=READY_TIMEOUT,
            what=f"ChatBot {name} to be {phase}",
        )
    except TimeoutError as error:
        status = json.dumps(chatbot(control_plane, namespace, name).get("status"), indent=1)
        raise AssertionError(f"{error}; its status:\n{status}") from None
    return found


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in body["status"]["conditions"] if c["type"] == kind)
    return found


def apply(
    control_plane: ControlPlane, namespace: str, body: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return kubectl(
        control_plane, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(body), check=False
    )


def events(control_plane: ControlPlane, namespace: str, name: str) -> list[Any]:
    """Kubernetes Events about one ChatBot."""
    return list(
        client.CoreV1Api(control_plane.api_client())
        .list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind=ChatBot,involvedObject.name={name}"
        )
        .items
    )


def owned_objects(control_plane: ControlPlane, namespace: str, name: str) -> list[Any]:
    api = control_plane.api_client()
    selector = f"app.kubernetes.io/instance={name}"
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    return [
        *apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        *apps.list_namespaced_stateful_set(namespace, label_selector=selector).items,
        *core.list_namespaced_service(namespace, label_selector=selector).items,
        *core.list_namespaced_config_map(namespace, label_selector=selector).items,
    ]


@pytest.mark.parametrize("example", sorted(EXAMPLE_SECRETS))
def test_each_example_becomes_ready_with_owned_children(
    control_plane: ControlPlane, operator: Operator, namespace: str, example: str
) -> None:
    create_secrets(control_plane, namespace, EXAMPLE_SECRETS[example])
    # What the file holds beside its ChatBot (a ConfigMap of documents), applied with it.
    for companion in companions(EXAMPLES / f"{example}.yaml"):
        assert apply(control_plane, namespace, companion).returncode == 0
    body = load_example(example)
    assert apply(control_plane, namespace, body).returncode == 0

    ready = wait_phase(control_plane, namespace, body["metadata"]["name"])

    assert all(c["status"] == "True" for c in ready["status"]["conditions"])
    assert ready["status"]["observedGeneration"] == ready["metadata"]["generation"]
    # No finalizer: a ChatBot can be deleted even with the operator uninstalled.
    assert not ready["metadata"].get("finalizers")
    children = owned_objects(control_plane, namespace, body["metadata"]["name"])
    assert children
    reported = eventually(
        lambda: {
            (e.type, e.reason): e.message
            for e in events(control_plane, namespace, body["metadata"]["name"])
        }.get(("Normal", "Ready")),
        what="a Ready event on the ChatBot",
    )
    assert "ready" in reported.lower()
    # No Secret value in the status, the Events or the operator's log.
    said = "\n".join(
        [
            json.dumps(ready["status"]),
            *(e.message for e in events(control_plane, namespace, body["metadata"]["name"])),
            operator.process.log_path.read_text() if operator.process else "",
        ]
    )
    for secret in EXAMPLE_SECRETS[example].values():
        for value in secret.values():
            assert value not in said
    # The operator logs JSON, one object a line, as the services do.
    log = operator.process.log_path.read_text() if operator.process else ""
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    for child in children:
        (owner,) = child.metadata.owner_references
        assert (owner.kind, owner.uid, owner.controller) == (
            "ChatBot",
            ready["metadata"]["uid"],
            True,
        )

    # Converged, it is left alone: children that only the operator writes keep their
    # versions (a policy applied with `ingress: []`, which the API server drops, changed at
    # every apply, and the operator put it back many times a second).
    def versions() -> dict[tuple[str, str], str]:
        selector = f"app.kubernetes.io/instance={body['metadata']['name']}"
        api = control_plane.api_client()
        written: list[Any] = [
            *client.NetworkingV1Api(api)
            .list_namespaced_network_policy(namespace, label_selector=selector)
            .items,
            *client.CoreV1Api(api)
            .list_namespaced_config_map(namespace, label_selector=selector)
            .items,
        ]
        return {(type(o).__name__, o.metadata.name): o.metadata.resource_version for o in written}

    before = versions()
    time.sleep(5)
    assert versions() == before


def test_model_pods_land_on_gpu_nodes_with_their_gpus_and_scale_with_kubectl(
    control_plane: ControlPlane, namespace: str
) -> None:
    create_secrets(control_plane, namespace, EXAMPLE_SECRETS["vllm-gpu-slack-kb"])
    body = load_example("vllm-gpu-slack-kb")
    body["spec"]["knowledgeBase"]["sources"] = []
    apply(control_plane, namespace, body)
    wait_phase(control_plane, namespace, "harbour")

    kubectl(control_plane, "scale", "-n", namespace, "chatbot", "harbour", "--replicas=3")

    scaled = eventually(
        lambda: (
            (found := chatbot(control_plane, namespace, "harbour"))["status"]["model"][
                "readyReplicas"
            ]
            == 3
            and found
        ),
        timeout=READY_TIMEOUT,
        what="3 Ready model replicas",
    )
    assert scaled["spec"]["model"]["replicas"] == 3
    core = client.CoreV1Api(control_plane.api_client())
    pods = core.list_namespaced_pod(
        namespace, label_selector=scaled["status"]["model"]["selector"]
    ).items
    assert len(pods) == 3
    for pod in pods:
        assert pod.spec.node_name.startswith("gpu-node-")
        assert pod.spec.containers[0].resources.limits[GPU_RESOURCE] == "2"
    table = kubectl(
        control_plane, "get", "cb", "harbour", "-n", namespace, "--no-headers"
    ).stdout.split()
    assert table[3] == "3", "the READY column"
    assert table[5] == "Ready"


def test_deleting_the_chatbot_collects_every_child(
    control_plane: ControlPlane, namespace: str
) -> None:
    apply(control_plane, namespace, load_example("cpu-ollama"))
    wait_phase(control_plane, namespace, "helpdesk")
    assert owned_objects(control_plane, namespace, "helpdesk")

    kubectl(control_plane, "delete", "-n", namespace, "chatbot", "helpdesk")

    core = client.CoreV1Api(control_plane.api_client())
    eventually(
        lambda: not owned_objects(control_plane, namespace, "helpdesk"),
        timeout=60,
        what="garbage collection",
    )
    eventually(
        lambda: (
            not core.list_namespaced_pod(
                namespace, label_selector="app.kubernetes.io/instance=helpdesk"
            ).items
        ),
        timeout=60,
        what="the Pods to go",
    )


def test_the_chatbots_data_waits_for_it_when_retained_and_goes_with_it_otherwise(
    control_plane: ControlPlane, namespace: str
) -> None:
    body = load_example("cpu-ollama")
    body["spec"]["knowledgeBase"] = {"enabled": True, "storage": "1Gi"}
    body["spec"]["retainDataOnDelete"] = True
    claims = {"data-helpdesk-memory-0", "data-helpdesk-knowledge-base-0"}
    api = control_plane.api_client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)

    def found() -> dict[str, Any]:
        items = core.list_namespaced_persistent_volume_claim(namespace).items
        return {str(c.metadata.name): c for c in items if c.metadata.deletion_timestamp is None}

    def statefulsets() -> list[Any]:
        selector = "app.kubernetes.io/instance=helpdesk"
        return list(apps.list_namespaced_stateful_set(namespace, label_selector=selector).items)

    assert apply(control_plane, namespace, body).returncode == 0
    wait_phase(control_plane, namespace, "helpdesk")
    first = {name: claim.metadata.uid for name, claim in found().items() if name in claims}
    assert set(first) == claims

    kubectl(control_plane, "delete", "-n", namespace, "chatbot", "helpdesk")
    eventually(lambda: not statefulsets(), timeout=60, what="the StatefulSets to go")
    # Kept, and nobody's: no owner whose deletion would take them.
    kept = found()
    assert {name: kept[name].metadata.uid for name in claims} == first
    assert not any(kept[name].metadata.owner_references for name in claims)

    # Created again with the same name, the ChatBot takes its claims back.
    assert apply(control_plane, namespace, body).returncode == 0
    wait_phase(control_plane, namespace, "helpdesk")
    assert {name: found()[name].metadata.uid for name in claims} == first

    # Asked to let them go, each claim is its StatefulSet's, and goes with the ChatBot.
    body["spec"]["retainDataOnDelete"] = False
    assert apply(control_plane, namespace, body).returncode == 0
    owners = {s.metadata.uid for s in statefulsets()}

    def owned() -> bool:
        now = found()
        return all(
            {owner.uid for owner in now[name].metadata.owner_references or []} & owners
            for name in claims
        )

    eventually(owned, timeout=60, what="the StatefulSets to own their claims")
    kubectl(control_plane, "delete", "-n", namespace, "chatbot", "helpdesk")
    eventually(lambda: not claims & set(found()), timeout=60, what="the claims to go")


def test_missing_secret_marks_platforms_not_ready_then_recovers(
    control_plane: ControlPlane, namespace: str
) -> None:
    body = load_example("external-endpoint")
    secrets = EXAMPLE_SECRETS["external-endpoint"]
    create_secrets(control_plane, namespace, {"llm-endpoint": secrets["llm-endpoint"]})
    apply(control_plane, namespace, body)

    degraded = wait_phase(control_plane, namespace, "shared-llm", "Degraded")
    platforms = condition(degraded, "PlatformsReady")
    assert (platforms["status"], platforms["reason"]) == ("False", "SecretNotFound")
    assert "'discord'" in platforms["message"] and "'token'" in platforms["message"]
    warning = eventually(
        lambda: [
            e
            for e in events(control_plane, namespace, "shared-llm")
            if (e.type, e.reason) == ("Warning", "SecretNotFound")
        ],
        what="a SecretNotFound event",
    )[0]
    assert "'discord'" in warning.message
    apps = client.AppsV1Api(control_plane.api_client())
    eventually(
        lambda: (
            condition(chatbot(control_plane, namespace, "shared-llm"), "GatewayReady")["status"]
            == "True"
        ),
        what="the rest of the stack to be Ready",
    )
    assert [
        d.metadata.name
        for d in apps.list_namespaced_deployment(namespace).items
        if d.metadata.name.endswith("discord")
    ] == []

    create_secrets(control_plane, namespace, {"discord": secrets["discord"]})

    wait_phase(control_plane, namespace, "shared-llm")
    assert (
        apps.read_namespaced_deployment("shared-llm-discord", namespace).status.ready_replicas == 1
    )


def test_children_edited_or_deleted_by_hand_are_put_back(
    control_plane: ControlPlane, namespace: str
) -> None:
    apply(control_plane, namespace, load_example("cpu-ollama"))
    wait_phase(control_plane, namespace, "helpdesk")
    core = client.CoreV1Api(control_plane.api_client())
    apps = client.AppsV1Api(control_plane.api_client())
    old_uid = core.read_namespaced_service("helpdesk-gateway", namespace).metadata.uid

    kubectl(
        control_plane, "scale", "-n", namespace, "statefulset", "helpdesk-model", "--replicas=4"
    )
    core.delete_namespaced_service("helpdesk-gateway", namespace)

    eventually(
        lambda: apps.read_namespaced_stateful_set("helpdesk-model", namespace).spec.replicas == 1,
        timeout=30,
        what="the model StatefulSet back at 1 replica",
    )
    eventually(
        lambda: _uid_of(core, "helpdesk-gateway", namespace) not in (None, old_uid),
        timeout=30,
        what="the gateway Service to be recreated",
    )


def _uid_of(core: client.CoreV1Api, name: str, namespace: str) -> str | None:
    try:
        return str(core.read_namespaced_service(name, namespace).metadata.uid)
    except client.exceptions.ApiException:
        return None


def test_dropping_a_platform_deletes_its_deployment(
    control_plane: ControlPlane, namespace: str
) -> None:
    create_secrets(control_plane, namespace, EXAMPLE_SECRETS["all-platforms"])
    body = load_example("all-platforms")
    apply(control_plane, namespace, body)
    wait_phase(control_plane, namespace, "tertulia")
    apps = client.AppsV1Api(control_plane.api_client())

    del body["spec"]["platforms"]["slack"]
    apply(control_plane, namespace, body)

    eventually(
        lambda: (
            "tertulia-slack"
            not in {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}
        ),
        timeout=30,
        what="the Slack Deployment to be deleted",
    )
    assert apps.read_namespaced_deployment("tertulia-discord", namespace)
    # The status follows the deletion (the operator writes it after it prunes).
    eventually(
        lambda: (
            chatbot(control_plane, namespace, "tertulia")["status"]["platforms"]
            == "discord,telegram"
        ),
        timeout=30,
        what="the status to list the remaining platforms",
    )


def test_an_operator_killed_mid_reconcile_converges_after_restart(
    control_plane: ControlPlane, namespace: str, operator: Operator
) -> None:
    names = [f"bot{index}" for index in range(6)]
    for name in names:
        body = load_example("cpu-ollama")
        body["metadata"]["name"] = name
        body["spec"]["model"]["resources"] = {"requests": {"cpu": "100m", "memory": "128Mi"}}
        apply(control_plane, namespace, body)
    # Killed as soon as the first child exists: the moment of the kill is recorded, to prove
    # it landed mid-way, with some children applied and others not.
    eventually(
        lambda: children(control_plane, namespace), timeout=30, what="a first child", interval=0.02
    )
    operator.kill()
    at_kill = len(children(control_plane, namespace))
    operator.start()

    for name in names:
        wait_phase(control_plane, namespace, name)
    converged = children(control_plane, namespace)
    assert 0 < at_kill < len(converged), (at_kill, len(converged))
    # One workload of each component per ChatBot, owned by that ChatBot: none twice, none
    # missing, none adopted by another.
    custom = client.CustomObjectsApi(control_plane.api_client())
    uids = {
        bot["metadata"]["uid"]: bot["metadata"]["name"]
        for bot in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    }
    workloads = [
        (uids[owner.uid], item.metadata.labels["app.kubernetes.io/component"])
        for item in converged
        if item.kind in ("Deployment", "StatefulSet")
        for owner in item.metadata.owner_references
    ]
    expected = [(name, component) for name in names for component in ("gateway", "memory", "model")]
    assert sorted(workloads) == sorted(expected)


def children(control_plane: ControlPlane, namespace: str) -> list[Any]:
    """Every object the operator made in the namespace (by its label), with its kind."""
    api = control_plane.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    networking = client.NetworkingV1Api(api)
    selector = "app.kubernetes.io/managed-by=tertulia-operator"
    found = []
    for kind, listing in (
        ("Deployment", apps.list_namespaced_deployment),
        ("StatefulSet", apps.list_namespaced_stateful_set),
        ("Service", core.list_namespaced_service),
        ("ConfigMap", core.list_namespaced_config_map),
        ("Secret", core.list_namespaced_secret),
        ("ServiceAccount", core.list_namespaced_service_account),
        ("NetworkPolicy", networking.list_namespaced_network_policy),
    ):
        for item in listing(namespace, label_selector=selector).items:
            item.kind = kind
            found.append(item)
    return found


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no model", {}, "spec.model"),
    ("unknown engine", {"model": {"engine": "tgi", "name": "m"}}, "spec.model.engine"),
    ("vllm without a model name", {"model": {"engine": "vllm"}}, "spec.model.name"),
    ("endpoint without a URL", {"model": {"engine": "endpoint"}}, "spec.model.endpoint"),
    (
        "endpoint with GPUs",
        {"model": {"engine": "endpoint", "endpoint": "http://x/v1", "gpus": 1}},
        "spec.model.gpus",
    ),
    ("too many replicas", {"model": {"name": "m", "replicas": 1000}}, "spec.model.replicas"),
    (
        "autoscaling with a minimum over its maximum",
        {"model": {"name": "m", "autoscaling": {"minReplicas": 3, "maxReplicas": 2}}},
        "spec.model.autoscaling.minReplicas",
    ),
    (
        "autoscaling an endpoint",
        {"model": {"engine": "endpoint", "endpoint": "http://x/v1", "autoscaling": {}}},
        "spec.model.autoscaling",
    ),
    ("too many GPUs", {"model": {"name": "m", "gpus": 64}}, "spec.model.gpus"),
    ("vllm with zero GPUs", {"model": {"name": "m", "gpus": 0}}, "spec.model.gpus"),
    (
        "telegram webhook without a URL",
        {
            "model": {"name": "m"},
            "platforms": {
                "telegram": {"mode": "webhook", "tokenSecretRef": {"name": "t", "key": "k"}}
            },
        },
        "spec.platforms.telegram.webhookUrl",
    ),
    (
        "slack socket mode without an app token",
        {
            "model": {"name": "m"},
            "platforms": {"slack": {"botTokenSecretRef": {"name": "s", "key": "k"}}},
        },
        "spec.platforms.slack.appTokenSecretRef",
    ),
    (
        "temperature out of range",
        {"model": {"name": "m"}, "gateway": {"temperature": 3}},
        "spec.gateway.temperature",
    ),
    (
        "autoscaling bounds reversed",
        {"model": {"name": "m"}, "gateway": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
        "spec.gateway.autoscaling.minReplicas",
    ),
    (
        "a source with both kinds",
        {
            "model": {"name": "m"},
            "knowledgeBase": {
                "sources": [{"configMap": {"name": "a"}, "persistentVolumeClaim": {"name": "b"}}]
            },
        },
        "spec.knowledgeBase.sources[0]",
    ),
    (
        "llama.cpp given a whole repository",
        {"model": {"engine": "llamacpp", "source": "hf://owner/repo"}},
        "spec.model.source",
    ),
    (
        "ollama given a hugging face file",
        {"model": {"engine": "ollama", "source": "hf://owner/repo/model.gguf"}},
        "spec.model.source",
    ),
    (
        "a source of no known kind",
        {"model": {"engine": "llamacpp", "source": "s3://bucket/model.gguf"}},
        "spec.model.source",
    ),
    (
        "an endpoint with weights",
        {
            "model": {
                "engine": "endpoint",
                "endpoint": "http://x/v1",
                "source": "hf://owner/repo/m.gguf",
            }
        },
        "spec.model.source",
    ),
    (
        "a slack api url without its slash",
        {
            "model": {"name": "m"},
            "platforms": {
                "slack": {
                    "mode": "events",
                    "botTokenSecretRef": {"name": "s", "key": "k"},
                    "signingSecretRef": {"name": "s", "key": "g"},
                    "apiUrl": "https://slack-gov.com/api",
                }
            },
        },
        "spec.platforms.slack.apiUrl",
    ),
    (
        "arguments ollama would drop",
        {"model": {"engine": "ollama", "name": "llama3.2:1b", "args": ["--verbose"]}},
        "spec.model.args",
    ),
    (
        "an ollama name with shell in it",
        {"model": {"engine": "ollama", "name": "x'; rm -rf /cache; '"}},
        "spec.model.name",
    ),
    (
        "gpu memory share for llama.cpp",
        {"model": {"engine": "llamacpp", "name": "m.gguf", "gpuMemoryUtilization": 0.5}},
        "spec.model.gpuMemoryUtilization",
    ),
    (
        "a gpu memory share over 1",
        {"model": {"name": "m", "gpuMemoryUtilization": 1.5}},
        "spec.model.gpuMemoryUtilization",
    ),
    (
        "a cache access mode kubernetes has not",
        {"model": {"name": "m", "cache": {"accessMode": "ReadOnlyMany"}}},
        "spec.model.cache.accessMode",
    ),
    (
        "a startup allowance under a minute",
        {"model": {"name": "m", "startupTimeoutSeconds": 5}},
        "spec.model.startupTimeoutSeconds",
    ),
    (
        "an external redis without tls",
        {
            "model": {"name": "m"},
            "gateway": {
                "memory": {
                    "external": {
                        "url": "redis://cache.example.com:6379/0",
                        "passwordSecretRef": {"name": "cache", "key": "password"},
                    }
                }
            },
        },
        "spec.gateway.memory.external.url",
    ),
    (
        "an external redis without a password",
        {
            "model": {"name": "m"},
            "gateway": {"memory": {"external": {"url": "rediss://cache.example.com:6380/0"}}},
        },
        "spec.gateway.memory.external.passwordSecretRef",
    ),
    (
        "a knowledge base of more nodes than it spreads over",
        {"model": {"name": "m"}, "knowledgeBase": {"enabled": True, "replicas": 10}},
        "spec.knowledgeBase.replicas",
    ),
    (
        "backups of a knowledge base on several nodes",
        {"model": {"name": "m"}, "knowledgeBase": {"enabled": True, "replicas": 2, "backup": {}}},
        "spec.knowledgeBase.backup",
    ),
    (
        "a backup bucket with half its credentials",
        {
            "model": {"name": "m"},
            "knowledgeBase": {
                "enabled": True,
                "backup": {
                    "s3": {
                        "bucket": "backups",
                        "accessKeyIdSecretRef": {"name": "b", "key": "id"},
                    }
                },
            },
        },
        "spec.knowledgeBase.backup.s3.secretAccessKeySecretRef",
    ),
    (
        "an external weaviate that is not a url",
        {
            "model": {"name": "m"},
            "knowledgeBase": {
                "enabled": True,
                "external": {
                    "url": "weaviate.example.com:8080",
                    "apiKeySecretRef": {"name": "w", "key": "k"},
                },
            },
        },
        "spec.knowledgeBase.external.url",
    ),
    (
        "backups of an external weaviate",
        {
            "model": {"name": "m"},
            "knowledgeBase": {
                "enabled": True,
                "backup": {},
                "external": {
                    "url": "https://weaviate.example.com",
                    "apiKeySecretRef": {"name": "w", "key": "k"},
                },
            },
        },
        "spec.knowledgeBase.backup",
    ),
    (
        "a redis that refuses in a way the gateway has not",
        {"model": {"name": "m"}, "gateway": {"memory": {"whenUnavailable": "wait"}}},
        "spec.gateway.memory.whenUnavailable",
    ),
    (
        "two redis servers, too few sentinels to agree",
        {"model": {"name": "m"}, "gateway": {"memory": {"replicas": 2}}},
        "spec.gateway.memory.replicas",
    ),
    (
        "sentinels over redis servers that start empty",
        {"model": {"name": "m"}, "gateway": {"memory": {"replicas": 3, "persistent": False}}},
        "spec.gateway.memory.persistent",
    ),
    (
        "a primary that waits for more replicas than it has",
        {
            "model": {"name": "m"},
            "gateway": {"memory": {"replicas": 3, "sentinel": {"minReplicasToWrite": 3}}},
        },
        "spec.gateway.memory.sentinel.minReplicasToWrite",
    ),
    (
        "a key for a model server that checks none",
        {"model": {"engine": "ollama", "name": "m", "requireApiKey": True}},
        "spec.model.requireApiKey",
    ),
    (
        "a key for an embeddings endpoint the operator does not run",
        {
            "model": {"name": "m"},
            "knowledgeBase": {
                "enabled": True,
                "embedding": {"endpoint": "https://embed.example/v1", "requireApiKey": True},
            },
        },
        "spec.knowledgeBase.embedding.requireApiKey",
    ),
    (
        "a pinned digest of weights nothing downloads",
        {"model": {"engine": "vllm", "name": "m", "sha256": "a" * 64}},
        "spec.model.sha256",
    ),
    (
        "vLLM calling tools without the parser of its format",
        {"model": {"engine": "vllm", "name": "m", "tools": {"enabled": True}}},
        "spec.model.tools.parser",
    ),
    (
        "a tool-call parser for an engine that has none",
        {"model": {"engine": "ollama", "name": "m", "tools": {"enabled": True, "parser": "x"}}},
        "spec.model.tools.parser",
    ),
    (
        "a tool-call parser that is not a parser's name",
        {"model": {"name": "m", "tools": {"enabled": True, "parser": "hermes --trust"}}},
        "spec.model.tools.parser",
    ),
]


@pytest.mark.parametrize(("case", "spec", "field"), INVALID, ids=[case for case, _, _ in INVALID])
def test_invalid_chatbots_are_refused_naming_the_field(
    control_plane: ControlPlane, namespace: str, case: str, spec: dict[str, Any], field: str
) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ChatBot",
        "metadata": {"name": "bad"},
        "spec": spec,
    }

    result = apply(control_plane, namespace, body)

    assert result.returncode != 0, case
    assert field in result.stderr, result.stderr


def test_a_knowledge_base_keeps_its_number_of_nodes(
    control_plane: ControlPlane, namespace: str
) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ChatBot",
        "metadata": {"name": "nodes"},
        "spec": {"model": {"name": "m"}, "knowledgeBase": {"enabled": True, "replicas": 2}},
    }
    assert apply(control_plane, namespace, body).returncode == 0

    body["spec"]["knowledgeBase"]["replicas"] = 3
    result = apply(control_plane, namespace, body)

    assert result.returncode != 0
    assert "spec.knowledgeBase.replicas" in result.stderr, result.stderr
    assert "cannot change once the knowledge base exists" in result.stderr


def test_redis_goes_from_one_server_to_sentinels_only_by_a_new_chatbot(
    control_plane: ControlPlane, namespace: str
) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ChatBot",
        "metadata": {"name": "memory"},
        "spec": {"model": {"name": "m"}, "gateway": {"memory": {"replicas": 3}}},
    }
    assert apply(control_plane, namespace, body).returncode == 0
    body["spec"]["gateway"]["memory"]["replicas"] = 5
    assert apply(control_plane, namespace, body).returncode == 0, "more Sentinels: in place"

    body["spec"]["gateway"]["memory"]["replicas"] = 1
    result = apply(control_plane, namespace, body)

    assert result.returncode != 0
    assert "spec.gateway.memory.replicas" in result.stderr, result.stderr
    assert "cannot change between 1 and more in place" in result.stderr


def test_a_name_too_long_for_its_children_is_refused(
    control_plane: ControlPlane, namespace: str
) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ChatBot",
        "metadata": {"name": "x" * 41},
        "spec": {"model": {"name": "m"}},
    }
    result = apply(control_plane, namespace, body)
    assert result.returncode != 0
    assert "metadata.name must be at most 40 characters" in result.stderr


def test_the_knowledge_base_gets_a_generated_key_and_reingests_when_its_documents_change(
    control_plane: ControlPlane, namespace: str
) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    batch = client.BatchV1Api(control_plane.api_client())
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "team-docs"}, "data": {"faq.md": "# FAQ\n\nOne.\n"}}
    )
    create_secrets(control_plane, namespace, EXAMPLE_SECRETS["vllm-gpu-slack-kb"])
    apply(control_plane, namespace, load_example("vllm-gpu-slack-kb"))
    wait_phase(control_plane, namespace, "harbour")

    key = core.read_namespaced_secret("harbour-knowledge-base", namespace)
    assert len(key.data["api-key"]) >= 40
    gateway = core.read_namespaced_config_map("harbour-gateway", namespace)
    assert "api_key_file: /etc/tertulia/knowledge-base/api-key" in gateway.data["gateway.yaml"]
    assert key.data["api-key"] not in json.dumps(chatbot(control_plane, namespace, "harbour"))

    def jobs() -> set[str]:
        selector = "app.kubernetes.io/instance=harbour,app.kubernetes.io/component=ingest"
        return {
            str(job.metadata.name)
            for job in batch.list_namespaced_job(namespace, label_selector=selector).items
        }

    first = eventually(jobs, timeout=READY_TIMEOUT, what="the ingest Job")
    assert len(first) == 1

    core.patch_namespaced_config_map(
        "team-docs", namespace, {"data": {"faq.md": "# FAQ\n\nTwo.\n"}}
    )

    newer = eventually(
        lambda: (found := jobs() - first) and found,
        timeout=READY_TIMEOUT,
        what="a new ingest Job after the documents changed",
    )
    assert len(newer) == 1
    # The Job over the old content goes: it no longer matches the spec.
    eventually(lambda: not (jobs() & first), timeout=READY_TIMEOUT, what="the old Job to go")
