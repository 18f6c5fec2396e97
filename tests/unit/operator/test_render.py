"""Render functions: golden files per example, and the rules each component must follow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tertulia.gateway.settings import GatewaySettings
from tertulia.operator.api import ChatBot, LocalRef, SourceSpec
from tertulia.operator.plan import ObjectRef
from tertulia.operator.render import Installation, render_all
from tertulia.operator.render.gateway import gateway_config
from tests.examples import chatbot_document

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"
IMAGE = "ghcr.io/tertulia/tertulia:test"


def load(path: Path, **metadata: Any) -> ChatBot:
    body = chatbot_document(path)
    body["metadata"] = {
        "namespace": "bots",
        "uid": "0000-uid",
        "generation": 1,
        **body["metadata"],
        **metadata,
    }
    return ChatBot.from_body(body)


def example(name: str) -> ChatBot:
    return load(REPO / "manifests" / "examples" / f"{name}.yaml")


def by_ref(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_rendered_example_matches_its_golden_file(path: Path) -> None:
    rendered = yaml.safe_dump_all(render_all(load(path), image=IMAGE), sort_keys=True)
    golden = GOLDEN / f"{path.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.read_text() == rendered, f"{golden.name} differs: review, then `make generate`"


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_the_kinds_never_pruned_are_the_same_whatever_the_spec(path: Path) -> None:
    # The operator prunes every owned kind but these, and is not granted their deletion:
    # each ChatBot has exactly these ServiceAccounts (its workloads', its gateway's) and
    # this one ConfigMap.
    bot = load(path)
    never_pruned = {
        (m["kind"], m["metadata"]["name"])
        for m in render_all(bot, image=IMAGE)
        if m["kind"] in ("ServiceAccount", "ConfigMap")
    }
    assert never_pruned == {
        ("ServiceAccount", f"{bot.name}-workload"),
        ("ServiceAccount", f"{bot.name}-gateway"),
        ("ConfigMap", f"{bot.name}-gateway"),
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_every_child_is_owned_labelled_and_uniquely_named(path: Path) -> None:
    bot = load(path)
    manifests = render_all(bot, image=IMAGE)
    refs = [ObjectRef.of(m) for m in manifests]
    assert len(refs) == len(set(refs))
    for manifest in manifests:
        meta = manifest["metadata"]
        assert meta["namespace"] == "bots"
        assert len(meta["name"]) <= 63
        assert meta["labels"]["app.kubernetes.io/instance"] == bot.name
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "tertulia-operator"
        (owner,) = meta["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "ChatBot",
            bot.name,
            "0000-uid",
            True,
        )


def empty_lists(value: Any, path: str = "") -> list[str]:
    """The paths of the empty lists in a manifest."""
    if isinstance(value, dict):
        return [
            found for key, item in value.items() for found in empty_lists(item, f"{path}.{key}")
        ]
    if isinstance(value, list):
        if not value:
            return [path]
        return [
            found for i, item in enumerate(value) for found in empty_lists(item, f"{path}[{i}]")
        ]
    return []


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
@pytest.mark.parametrize(
    "installation",
    [Installation(), Installation(scrapers={"namespaceSelector": {}}, egress="restricted")],
    ids=["default", "scraped-restricted"],
)
def test_no_child_holds_an_empty_list(path: Path, installation: Installation) -> None:
    """The API server drops an empty list, so each apply of one is a change: a new
    resourceVersion, a watch event, the operator putting the child back, and so on many
    times a second (a gateway policy with no clients did so)."""
    for manifest in render_all(load(path), image=IMAGE, installation=installation):
        assert empty_lists(manifest) == [], manifest["metadata"]["name"]


def test_vllm_requests_its_gpus_and_spans_them_with_tensor_parallelism() -> None:
    manifests = by_ref(render_all(example("vllm-gpu-slack-kb"), image=IMAGE))
    model = manifests["StatefulSet", "harbour-model"]
    pod = model["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["args"][container["args"].index("--tensor-parallel-size") + 1] == "2"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert (
        container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"]
        >= 3600
    )
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    } in container["env"]
    assert model["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "cache"


def test_gpu_resource_name_and_passthrough_fields_reach_the_pod() -> None:
    bot = example("vllm-gpu-slack-kb")
    spec = bot.spec.model_copy(
        update={
            "model": bot.spec.model.model_copy(
                update={
                    "gpu_resource_name": "amd.com/gpu",
                    "tolerations": [
                        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "affinity": {
                        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
                    },
                }
            )
        }
    )
    pod = by_ref(render_all(bot.model_copy(update={"spec": spec}), image=IMAGE))[
        "StatefulSet", "harbour-model"
    ]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"amd.com/gpu": "2"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "nodeAffinity" in pod["affinity"]


def test_an_endpoint_chatbot_runs_no_model_server_and_points_the_gateway_at_the_url() -> None:
    bot = example("external-endpoint")
    manifests = by_ref(render_all(bot, image=IMAGE))
    assert not [ref for ref in manifests if ref[1].startswith("shared-llm-model")]
    config = gateway_config(bot)
    assert config["backend"]["url"] == "http://vllm.llm-platform.svc:8000/v1"
    assert config["backend"]["api_key_file"] == "/etc/tertulia/backend/api-key"
    assert "replicas" not in config["backend"]  # one URL, no replicas to choose from


def test_the_gateway_routes_over_the_model_pods_a_headless_service_lists_when_ready() -> None:
    bot = example("vllm-gpu-slack-kb")
    manifests = by_ref(render_all(bot, image=IMAGE))
    name = bot.child("model-replicas")
    headless = manifests["Service", name]["spec"]
    model = manifests["Service", bot.child("model")]["spec"]
    # The model's pods, by the same selector as its Service; ready ones only.
    assert headless["clusterIP"] == "None" and headless["selector"] == model["selector"]
    assert headless["publishNotReadyAddresses"] is False
    assert [p["port"] for p in headless["ports"]] == [model["ports"][0]["port"]]
    backend = gateway_config(bot)["backend"]
    assert backend["replicas"] == f"{name}.{bot.namespace}.svc"
    assert backend["routing"] == "affinity"
    spec = bot.spec.model_dump(by_alias=True, exclude_none=True)
    spec["model"]["routing"] = "round-robin"
    spread = bot.model_copy(update={"spec": type(bot.spec).model_validate(spec)})
    assert gateway_config(spread)["backend"]["routing"] == "round-robin"


@pytest.mark.parametrize(
    ("engine", "args", "autoscaling", "capacity"),
    [
        ("llamacpp", [], None, 4),  # llama-server's slots when --parallel is left to auto
        ("llamacpp", ["-np", "8"], None, 8),
        ("llamacpp", ["--parallel", "2", "-np", "6"], None, 6),  # the last one counts
        ("llamacpp", ["--parallel=3"], None, 3),
        ("llamacpp", ["--parallel", "-1"], None, 4),  # auto
        ("vllm", ["--max-num-seqs", "64"], None, 64),
        ("vllm", [], None, 4),
        ("ollama", [], None, 4),
        ("vllm", ["--max-num-seqs", "64"], {"maxReplicas": 4, "targetInFlight": 16}, 16),
    ],
)
def test_a_replica_keeps_its_conversations_up_to_what_it_serves_at_once(
    engine: str, args: list[str], autoscaling: dict[str, int] | None, capacity: int
) -> None:
    bot = example("vllm-gpu-slack-kb")
    spec = bot.spec.model_dump(by_alias=True, exclude_none=True)
    spec["model"] |= {"engine": engine, "args": args}
    spec["model"].pop("autoscaling", None)
    if engine != "vllm":
        spec["model"] |= {"source": "hf://org/repo/model.gguf", "gpus": 0}
        spec["model"].pop("resources", None)
    if autoscaling is not None:
        spec["model"]["autoscaling"] = autoscaling
    changed = bot.model_copy(update={"spec": type(bot.spec).model_validate(spec)})
    assert gateway_config(changed)["backend"]["replica_capacity"] == capacity


@pytest.mark.parametrize(
    ("name", "autoscaling", "floor", "timeout"),
    [
        # On GPUs a cold start takes minutes: one replica stays unless asked otherwise, and a
        # held request waits for the engine and a 100Gi cache's worth of weights.
        ("vllm-gpu-slack-kb", {}, 1, 600 + 800),
        ("vllm-gpu-slack-kb", {"minReplicas": 0, "queueTimeoutSeconds": 900}, 0, 900),
        # On CPUs the model sleeps when idle and wakes in a few minutes.
        ("local", {}, 0, 240),
        ("local", {"minReplicas": 2}, 2, 240),
    ],
)
def test_a_model_on_gpus_is_not_scaled_to_zero_unless_asked(
    name: str, autoscaling: dict[str, int], floor: int, timeout: int
) -> None:
    bot = with_spec(example(name), {"model": {"autoscaling": autoscaling}})
    config = gateway_config(bot)
    scaling = config["autoscaling"]
    assert (scaling["min_replicas"], scaling["queue_timeout_seconds"]) == (floor, timeout)
    # The gateway's own settings take what the operator renders.
    settings = GatewaySettings.model_validate(
        {"autoscaling": scaling, "backend": config["backend"]}
    )
    assert settings.autoscaling.min_replicas == floor


def test_an_autoscaling_gateway_may_move_its_own_chatbots_scale_and_nothing_else() -> None:
    bot = example("vllm-gpu-slack-kb")
    manifests = by_ref(render_all(bot, image=IMAGE))
    gateway_pod = manifests["Deployment", bot.child("gateway")]["spec"]["template"]["spec"]
    # Without autoscaling: no Role, and no API token in the gateway's pods.
    assert gateway_pod["serviceAccountName"] == bot.child("gateway")
    assert gateway_pod["automountServiceAccountToken"] is False
    assert not [ref for ref in manifests if ref[0] in ("Role", "RoleBinding")]
    assert "autoscaling" not in gateway_config(bot)

    spec = bot.spec.model_dump(by_alias=True, exclude_none=True)
    spec["model"]["autoscaling"] = {"maxReplicas": 3, "scaleDownDelaySeconds": 60}
    scaled = bot.model_copy(update={"spec": type(bot.spec).model_validate(spec)})
    manifests = by_ref(render_all(scaled, image=IMAGE))
    gateway_pod = manifests["Deployment", bot.child("gateway")]["spec"]["template"]["spec"]
    assert gateway_pod["automountServiceAccountToken"] is True
    role = manifests["Role", bot.child("autoscaler")]
    assert role["rules"] == [
        {
            "apiGroups": ["tertulia.dev"],
            "resources": ["chatbots/scale"],
            "resourceNames": [bot.name],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": ["tertulia.dev"],
            "resources": ["chatbots/status"],
            "resourceNames": [bot.name],
            "verbs": ["patch"],
        },
    ]
    binding = manifests["RoleBinding", bot.child("autoscaler")]
    assert binding["roleRef"]["name"] == bot.child("autoscaler")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": bot.child("gateway"), "namespace": bot.namespace}
    ]
    assert gateway_config(scaled)["autoscaling"] == {
        "enabled": True,
        "chatbot": bot.name,
        "namespace": bot.namespace,
        # vLLM on GPUs: one replica kept, and time for a cold start and 100Gi of weights.
        "min_replicas": 1,
        "max_replicas": 3,
        "target_in_flight": 4,
        "scale_down_delay_seconds": 60,
        "queue_length": 100,
        "queue_timeout_seconds": 600 + 800,
    }
    # What the gateway reads: its settings accept the section as rendered.
    settings = GatewaySettings.model_validate(gateway_config(scaled))
    assert settings.autoscaling.enabled and settings.autoscaling.max_replicas == 3


def test_gateway_config_carries_the_spec_and_a_changed_config_rolls_the_pods() -> None:
    bot = example("vllm-gpu-slack-kb")
    before = by_ref(render_all(bot, image=IMAGE))
    config = yaml.safe_load(before["ConfigMap", "harbour-gateway"]["data"]["gateway.yaml"])
    assert config["memory"]["max_turns"] == 30
    assert config["moderation"]["blocked_terms"] == ["password", "api key"]
    assert config["redis_url"] == "redis://harbour-memory.bots.svc:6379/0"
    assert config["backend"]["url"] == "http://harbour-model.bots.svc:8000/v1"

    changed = bot.spec.model_copy(
        update={"gateway": bot.spec.gateway.model_copy(update={"system_prompt": "Be terse."})}
    )
    after = by_ref(render_all(bot.model_copy(update={"spec": changed}), image=IMAGE))
    checksum = "tertulia.dev/config-checksum"
    annotations_before = before["Deployment", "harbour-gateway"]["spec"]["template"]["metadata"][
        "annotations"
    ]
    annotations_after = after["Deployment", "harbour-gateway"]["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations_before[checksum] != annotations_after[checksum]


def test_platforms_with_missing_secrets_are_left_out() -> None:
    bot = example("all-platforms")
    everything = by_ref(render_all(bot, image=IMAGE))
    partial = by_ref(render_all(bot, image=IMAGE, ready_platforms={"discord"}))
    assert {
        ("Deployment", "tertulia-slack"),
        ("Deployment", "tertulia-telegram"),
    } <= everything.keys()
    assert ("Deployment", "tertulia-discord") in partial
    assert ("Deployment", "tertulia-slack") not in partial
    assert ("Service", "tertulia-telegram") not in partial


def test_bot_pods_get_their_tokens_as_files_and_never_as_env_values() -> None:
    manifests = by_ref(render_all(example("all-platforms"), image=IMAGE))
    pod = manifests["Deployment", "tertulia-telegram"]["spec"]["template"]["spec"]
    mounts = {mount["mountPath"] for mount in pod["containers"][0]["volumeMounts"]}
    assert {"/etc/tertulia/secrets/token", "/etc/tertulia/secrets/webhook-secret"} <= mounts
    assert all("valueFrom" not in env for env in pod["containers"][0]["env"])
    assert pod["automountServiceAccountToken"] is False


def test_only_the_gateway_reaches_the_model_and_the_knowledge_base() -> None:
    manifests = by_ref(render_all(example("vllm-gpu-slack-kb"), image=IMAGE))
    model_policy = manifests["NetworkPolicy", "harbour-model-ingress"]["spec"]
    sources = [
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in model_policy["ingress"][0]["from"]
    ]
    assert sources == ["gateway"]
    kb_policy = manifests["NetworkPolicy", "harbour-knowledge-base-ingress"]["spec"]
    kb_sources = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in kb_policy["ingress"][0]["from"]
    }
    assert kb_sources == {"gateway", "ingest"}


def test_ingest_job_is_renamed_when_its_sources_change() -> None:
    bot = example("vllm-gpu-slack-kb")
    jobs = [ref for ref in by_ref(render_all(bot, image=IMAGE)) if ref[0] == "Job"]
    kb = bot.spec.knowledge_base
    more = SourceSpec(persistent_volume_claim=LocalRef(name="more"))
    other = kb.model_copy(update={"sources": [*kb.sources, more]})
    changed = bot.model_copy(update={"spec": bot.spec.model_copy(update={"knowledge_base": other})})
    other_jobs = [ref for ref in by_ref(render_all(changed, image=IMAGE)) if ref[0] == "Job"]
    assert len(jobs) == len(other_jobs) == 1
    assert jobs != other_jobs


def test_the_ingest_job_reruns_when_a_source_configmap_changes() -> None:
    bot = example("vllm-gpu-slack-kb")

    def job(digests: dict[str, str]) -> str:
        manifests = render_all(bot, image=IMAGE, source_digests=digests)
        return str(next(m["metadata"]["name"] for m in manifests if m["kind"] == "Job"))

    assert job({"team-docs": "v1"}) == job({"team-docs": "v1"})
    assert job({"team-docs": "v1"}) != job({"team-docs": "v2"})


def test_the_knowledge_base_is_wired_with_the_generated_key_and_settings_the_gateway_reads() -> (
    None
):
    from tertulia.gateway.settings import KnowledgeBaseSettings
    from tertulia.knowledge.settings import KnowledgeSettings

    bot = example("vllm-gpu-slack-kb")
    manifests = by_ref(render_all(bot, image=IMAGE))
    config = yaml.safe_load(manifests["ConfigMap", "harbour-gateway"]["data"]["gateway.yaml"])
    knowledge = KnowledgeBaseSettings.model_validate(config["knowledge_base"])
    assert knowledge.enabled and knowledge.collection == "Harbour"
    assert str(knowledge.embedding.url) == "http://harbour-embeddings.bots.svc:8080/v1"
    assert knowledge.api_key_file == Path("/etc/tertulia/knowledge-base/api-key")
    weaviate = manifests["StatefulSet", "harbour-knowledge-base"]["spec"]["template"]["spec"]
    env = {item["name"]: item for item in weaviate["containers"][0]["env"]}
    assert env["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"]["value"] == "false"
    assert env["AUTHENTICATION_APIKEY_ALLOWED_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "harbour-knowledge-base",
        "key": "api-key",
    }
    job = next(m for m in manifests.values() if m["kind"] == "Job")
    job_env = {
        item["name"].removeprefix("TERTULIA_KB_"): item["value"]
        for item in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    nested: dict[str, Any] = {}
    for name, value in job_env.items():
        outer, _, inner = name.lower().partition("__")
        if inner:
            nested.setdefault(outer, {})[inner] = value
        else:
            nested[outer] = value
    assert KnowledgeSettings.model_validate(nested) == KnowledgeSettings.model_validate(
        {key: value for key, value in config["knowledge_base"].items() if key != "enabled"}
    )


def policy_clients(manifests: dict[tuple[str, str], Any], name: str) -> set[str]:
    policy = manifests["NetworkPolicy", name]["spec"]
    return {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in policy["ingress"][0]["from"]
    }


def test_without_an_embeddings_endpoint_the_operator_runs_one_for_the_gateway_and_ingest() -> None:
    bot = example("vllm-gpu-slack-kb")
    kb = bot.spec.knowledge_base
    assert kb.embedding.endpoint is None
    endpoint = "http://embeddings.ml.svc:8000/v1"
    external = kb.model_copy(
        update={"embedding": kb.embedding.model_copy(update={"endpoint": endpoint})}
    )
    spec = bot.spec.model_copy(update={"knowledge_base": external})
    elsewhere = by_ref(render_all(bot.model_copy(update={"spec": spec}), image=IMAGE))
    assert not any(
        kind == "Deployment" and name.endswith("-embeddings") for kind, name in elsewhere
    )
    config = yaml.safe_load(elsewhere["ConfigMap", "harbour-gateway"]["data"]["gateway.yaml"])
    assert config["knowledge_base"]["embedding"]["url"] == endpoint

    manifests = by_ref(render_all(bot, image=IMAGE))

    server = manifests["Deployment", "harbour-embeddings"]["spec"]["template"]["spec"]
    fetch = server["initContainers"][0]
    assert fetch["image"] == IMAGE
    assert fetch["args"] == [
        "model", "fetch", kb.embedding.source, "--cache", "/models", "--max-size", "2Gi"
    ]  # fmt: skip
    assert "--embeddings" in server["containers"][0]["args"]
    config = yaml.safe_load(manifests["ConfigMap", "harbour-gateway"]["data"]["gateway.yaml"])
    url = "http://harbour-embeddings.bots.svc:8080/v1"
    assert config["knowledge_base"]["embedding"]["url"] == url
    job = next(m for (kind, _), m in manifests.items() if kind == "Job")
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TERTULIA_KB_EMBEDDING__URL"] == url
    # The model server is the gateway's alone; the documents are embedded elsewhere.
    assert policy_clients(manifests, "harbour-model-ingress") == {"gateway"}
    assert policy_clients(manifests, "harbour-embeddings-ingress") == {"gateway", "ingest"}


def _embeddings_args(bot: ChatBot, **embedding: Any) -> list[str]:
    kb = bot.spec.knowledge_base
    changed = kb.model_copy(update={"embedding": kb.embedding.model_copy(update=embedding)})
    spec = bot.spec.model_copy(update={"knowledge_base": changed})
    manifests = by_ref(render_all(bot.model_copy(update={"spec": spec}), image=IMAGE))
    server = manifests["Deployment", "harbour-embeddings"]["spec"]["template"]["spec"]
    args: list[str] = server["containers"][0]["args"]
    return args


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_the_embeddings_server_holds_the_models_positions_and_pools_as_its_card_says() -> None:
    bot = example("vllm-gpu-slack-kb")
    # BAAI/bge-small-en-v1.5, the default: its GGUF's 512 positions (llama.cpp's
    # `--ctx-size 0`: "loaded from model"), an input in one batch, CLS pooling (its card).
    args = _embeddings_args(bot)
    assert bot.spec.knowledge_base.embedding.model == "BAAI/bge-small-en-v1.5"
    assert [_flag(args, flag) for flag in ("--ctx-size", "--batch-size", "--ubatch-size")] == [
        "0", "512", "512"
    ]  # fmt: skip
    assert _flag(args, "--pooling") == "cls"
    args = _embeddings_args(bot, model="sentence-transformers/all-MiniLM-L6-v2")
    assert _flag(args, "--pooling") == "mean"
    # A model Tertulia does not know pools as its GGUF says; a pooling set wins.
    assert "--pooling" not in _embeddings_args(bot, model="acme/house-embedder")
    args = _embeddings_args(bot, model="acme/house-embedder", pooling="last", context_length=8192)
    assert _flag(args, "--pooling") == "last"
    assert [_flag(args, flag) for flag in ("--ctx-size", "--batch-size", "--ubatch-size")] == [
        "8192", "8192", "8192"
    ]  # fmt: skip


def test_an_air_gapped_embeddings_server_reads_its_gguf_from_a_claim() -> None:
    bot = example("vllm-gpu-slack-kb")
    kb = bot.spec.knowledge_base
    source = "pvc://models/embedding/bge-small-en-v1.5.Q8_0.gguf"
    embedding = type(kb.embedding).model_validate({"source": source})  # the API accepts it
    changed = kb.model_copy(update={"embedding": embedding})
    spec = bot.spec.model_copy(update={"knowledge_base": changed})
    manifests = by_ref(render_all(bot.model_copy(update={"spec": spec}), image=IMAGE))
    pod = manifests["Deployment", "harbour-embeddings"]["spec"]["template"]["spec"]
    # Nothing fetched: the claim itself, read-only, and the file in it.
    assert "initContainers" not in pod
    assert pod["volumes"] == [
        {"name": "weights", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    ]
    container = pod["containers"][0]
    [mount] = container["volumeMounts"]
    assert mount["readOnly"] and mount["name"] == "weights"
    model = container["args"][container["args"].index("--model") + 1]
    assert model == f"{mount['mountPath']}/embedding/bge-small-en-v1.5.Q8_0.gguf"


def test_an_unreadable_document_fails_the_ingest_job_at_once_and_says_why() -> None:
    job = next(
        m for m in render_all(example("vllm-gpu-slack-kb"), image=IMAGE) if m["kind"] == "Job"
    )
    spec = job["spec"]
    (rule,) = spec["podFailurePolicy"]["rules"]
    # `kb ingest` exits 1 for a document it cannot read: no retry reads it better.
    assert rule == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "ingest", "operator": "In", "values": [1]},
    }
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # a failure policy needs it
    assert pod["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_the_ingress_sends_each_platforms_webhook_path_to_its_bot() -> None:
    bot = example("all-platforms")
    manifests = by_ref(render_all(bot, image=IMAGE))
    (rule,) = manifests["Ingress", "tertulia-gateway"]["spec"]["rules"]
    routes = {
        path["path"]: (path["pathType"], path["backend"]["service"]["name"])
        for path in rule["http"]["paths"]
    }
    assert routes == {
        "/slack/events": ("Exact", "tertulia-slack"),
        "/telegram": ("Exact", "tertulia-telegram"),
        "/": ("Prefix", "tertulia-gateway"),
    }
    # Each route ends at a Service the render makes, on a port it has; never at metrics.
    for _, service in routes.values():
        ports = manifests["Service", service]["spec"]["ports"]
        assert "http" in [port["name"] for port in ports]
    for path in rule["http"]["paths"]:
        assert path["backend"]["service"]["port"] == {"name": "http"}


def test_a_webhook_on_another_host_gets_a_rule_of_its_own() -> None:
    bot = example("all-platforms")
    assert bot.spec.platforms.telegram is not None
    telegram = bot.spec.platforms.telegram.model_copy(
        update={"webhook_url": "https://hooks.example.com/tg/updates"}
    )
    platforms = bot.spec.platforms.model_copy(update={"telegram": telegram})
    moved = bot.model_copy(update={"spec": bot.spec.model_copy(update={"platforms": platforms})})
    rules = by_ref(render_all(moved, image=IMAGE))["Ingress", "tertulia-gateway"]["spec"]["rules"]
    paths = {rule["host"]: [path["path"] for path in rule["http"]["paths"]] for rule in rules}
    assert paths == {
        "chat.example.com": ["/slack/events", "/"],
        "hooks.example.com": ["/tg/updates"],
    }


def test_redis_requires_the_generated_password_which_only_the_gateway_mounts() -> None:
    manifests = by_ref(render_all(example("all-platforms"), image=IMAGE))
    redis = manifests["StatefulSet", "tertulia-memory"]["spec"]["template"]["spec"]
    (container,) = redis["containers"]
    # The config file holding `requirepass` comes first, as redis-server reads it.
    assert container["args"][0] == "/etc/tertulia/memory/redis.conf"
    config = next(v for v in redis["volumes"] if v["name"] == "config")["secret"]
    assert config == {
        "secretName": "tertulia-memory",
        "items": [{"key": "redis.conf", "path": "redis.conf"}],
    }
    # The probe's redis-cli authenticates from the Secret; no value is in the spec.
    (auth,) = container["env"]
    assert auth["valueFrom"]["secretKeyRef"] == {"name": "tertulia-memory", "key": "password"}
    config_file = yaml.safe_load(manifests["ConfigMap", "tertulia-gateway"]["data"]["gateway.yaml"])
    assert config_file["redis_password_file"] == "/etc/tertulia/memory/password"
    mounting = [
        name
        for (kind, name), manifest in manifests.items()
        if kind in ("Deployment", "StatefulSet")
        and any(
            (volume.get("secret") or {}).get("secretName") == "tertulia-memory"
            for volume in manifest["spec"]["template"]["spec"].get("volumes", [])
        )
    ]
    assert sorted(mounting) == ["tertulia-gateway", "tertulia-memory"]


def test_redis_keeps_its_data_on_a_claim_and_evicts_only_what_has_a_ttl() -> None:
    manifests = by_ref(render_all(example("all-platforms"), image=IMAGE))
    redis = manifests["StatefulSet", "tertulia-memory"]["spec"]
    (container,) = redis["template"]["spec"]["containers"]
    arguments = container["args"]
    option = {arguments[i]: arguments[i + 1] for i in range(1, len(arguments), 2)}
    assert option["--appendonly"] == "yes"
    assert option["--dir"] == "/data"
    assert option["--maxmemory-policy"] == "volatile-lru"
    # Three quarters of the default 512Mi limit.
    assert option["--maxmemory"] == str(384 * 2**20)
    (claim,) = redis["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert all(v["name"] != "data" for v in redis["template"]["spec"]["volumes"])
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]


@pytest.mark.parametrize(("retain", "when_deleted"), [(False, "Delete"), (True, "Retain")])
def test_the_chatbots_data_outlives_it_only_when_asked(retain: bool, when_deleted: str) -> None:
    bot = example("vllm-gpu-slack-kb")
    spec = bot.spec.model_dump(by_alias=True, exclude_none=True)
    if retain:
        spec["retainDataOnDelete"] = True
    kept = bot.model_copy(update={"spec": type(bot.spec).model_validate(spec)})
    manifests = by_ref(render_all(kept, image=IMAGE))
    for component in ("memory", "knowledge-base"):
        statefulset = manifests["StatefulSet", kept.child(component)]["spec"]
        assert statefulset["volumeClaimTemplates"]
        # A replica scaled away keeps its claim for its return, whatever the setting.
        assert statefulset["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": when_deleted,
            "whenScaled": "Retain",
        }
    # The model's cache is weights fetched again at will: it goes with the ChatBot.
    model = manifests["StatefulSet", kept.child("model")]["spec"]
    assert model["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"


def test_redis_memory_follows_its_limit_and_can_run_without_a_claim() -> None:
    bot = example("local")
    memory = {
        "persistent": False,
        "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    }
    spec = bot.spec.model_dump(by_alias=True, exclude_none=True)
    spec["gateway"]["memory"] = memory
    bot = bot.model_copy(update={"spec": type(bot.spec).model_validate(spec)})
    manifests = by_ref(render_all(bot, image=IMAGE))
    redis = manifests["StatefulSet", f"{bot.name}-memory"]["spec"]
    (container,) = redis["template"]["spec"]["containers"]
    arguments = container["args"]
    assert arguments[arguments.index("--maxmemory") + 1] == str(3 * 2**29)
    assert arguments[arguments.index("--appendonly") + 1] == "no"
    assert "volumeClaimTemplates" not in redis
    data = {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}
    assert data in redis["template"]["spec"]["volumes"]


def with_memory(bot: ChatBot, memory: dict[str, Any]) -> ChatBot:
    spec = bot.spec.model_dump(by_alias=True, exclude_none=True)
    spec["gateway"]["memory"] = memory
    return bot.model_copy(update={"spec": type(bot.spec).model_validate(spec)})


def test_redis_with_sentinels_is_a_primary_and_replicas_that_the_gateway_finds_through_them() -> (
    None
):
    bot = with_memory(example("all-platforms"), {"replicas": 3})
    manifests = by_ref(render_all(bot, image=IMAGE))
    nodes = "tertulia-memory-nodes.bots.svc"
    memory = manifests["StatefulSet", "tertulia-memory"]["spec"]
    assert (memory["replicas"], memory["serviceName"]) == (3, "tertulia-memory-nodes")
    assert "podManagementPolicy" not in memory, "one pod at a time, each finding the primary"
    pod = memory["template"]["spec"]
    redis, sentinel = pod["containers"]
    assert (redis["name"], sentinel["name"]) == ("redis", "sentinel")
    assert sentinel["image"] == redis["image"]
    env = {item["name"]: item for item in sentinel["env"]}
    assert env["PEERS"]["value"].split() == [f"tertulia-memory-{i}.{nodes}" for i in range(3)]
    assert env["QUORUM"]["value"] == "2"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The scripts read the password from the mounted Secret.
    config = next(v for v in pod["volumes"] if v["name"] == "config")["secret"]["items"]
    assert {"key": "password", "path": "password"} in config
    assert pod["topologySpreadConstraints"]
    # The gateway asks the Sentinels of every pod for the primary.
    gateway = yaml.safe_load(manifests["ConfigMap", "tertulia-gateway"]["data"]["gateway.yaml"])
    sentinels = ",".join(f"tertulia-memory-{i}.{nodes}:26379" for i in range(3))
    assert gateway["redis_url"] == f"redis+sentinel://{sentinels}/memory/0"
    # Only the Sentinels behind the Service: a client of a replica's port could not write.
    (port,) = manifests["Service", "tertulia-memory"]["spec"]["ports"]
    assert port["port"] == 26379
    headless = manifests["Service", "tertulia-memory-nodes"]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"]
    assert manifests["PodDisruptionBudget", "tertulia-memory"]["spec"]["maxUnavailable"] == 1
    # The pods reach each other; the gateway reaches them.
    allowed = manifests["NetworkPolicy", "tertulia-memory-ingress"]["spec"]["ingress"][0]["from"]
    components = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in allowed
    }
    assert components == {"gateway", "memory"}


def start_script(
    tmp_path: Path, container: dict[str, Any], answers: dict[str, str], late: str = ""
) -> tuple[str, str]:
    """Run a Redis pod's start script as its container would, with a redis-cli that answers
    for the Sentinels in `answers` (peer: primary it names), refuses the first question to
    `late`'s, and says no other peer's name resolves, and a redis-server that prints its
    arguments and config file instead of serving; returns what it printed, and its errors."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    cli = bin_dir / "redis-cli"
    asked = tmp_path / "asked-once"
    asked.unlink(missing_ok=True)
    refuse_once = (
        f"if [ ! -e {asked} ]; then touch {asked}; "
        'echo "Could not connect to Redis at $4:26379: Connection refused" >&2; exit 1; fi; '
    )
    cases = "".join(
        f'  *" -h {peer} -p 26379 "*) {refuse_once if peer == late else ""}'
        f"echo {primary}; echo 6379; exit 0 ;;\n"
        for peer, primary in answers.items()
    )
    cli.write_text(
        f'#!/bin/sh\ncase " $* " in\n{cases}esac\ncase " $* " in\n'
        '  *" ping"*) echo PONG ;;\n'
        '  *) echo "Could not connect to Redis at $4:26379: Name or service not known" >&2;'
        " exit 1 ;;\nesac\n"
    )
    server = bin_dir / "redis-server"
    server.write_text('#!/bin/sh\necho "arguments: $*"\ncat "$1"\n')
    for tool in (cli, server):
        tool.chmod(0o755)
    secret = tmp_path / "secret"
    secret.mkdir(exist_ok=True)
    (secret / "password").write_text("s3cret")
    run_path = tmp_path / "run"
    run_path.mkdir(exist_ok=True)
    env = {item["name"]: item.get("value", "") for item in container["env"]}
    env |= {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "POD_NAME": answers.pop("me", "tertulia-memory-0"),
        "PASSWORD_FILE": str(secret / "password"),
        "RUN_PATH": str(run_path),
    }
    command = [*container["command"], *container.get("args", [])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return done.stdout, done.stderr


@pytest.mark.parametrize(
    ("me", "answers", "late", "follows"),
    [
        # The first start: no other pod; the first pod is the primary.
        ("tertulia-memory-0", {}, "", None),
        ("tertulia-memory-2", {}, "", "tertulia-memory-0"),
        # After a failover: the Sentinels name the new primary, and a pod that was it joins.
        ("tertulia-memory-0", {"tertulia-memory-1": "tertulia-memory-2"}, "", "tertulia-memory-2"),
        ("tertulia-memory-2", {"tertulia-memory-1": "tertulia-memory-2"}, "", None),
        # A Sentinel that does not answer the first question is asked again, not taken for
        # none: the pod that was the primary joins the new one instead of being a second.
        (
            "tertulia-memory-0",
            {"tertulia-memory-1": "tertulia-memory-1"},
            "tertulia-memory-1",
            "tertulia-memory-1",
        ),
    ],
)
def test_a_redis_pod_starts_as_the_primary_or_a_replica_of_the_one_the_sentinels_name(
    tmp_path: Path, me: str, answers: dict[str, str], late: str, follows: str | None
) -> None:
    bot = with_memory(example("all-platforms"), {"replicas": 3})
    manifests = by_ref(render_all(bot, image=IMAGE))
    redis, sentinel = manifests["StatefulSet", "tertulia-memory"]["spec"]["template"]["spec"][
        "containers"
    ]
    nodes = "tertulia-memory-nodes.bots.svc"
    named = {f"{peer}.{nodes}": f"{primary}.{nodes}" for peer, primary in answers.items()}
    late_peer = f"{late}.{nodes}" if late else ""
    said, errors = start_script(tmp_path, redis, {**named, "me": me}, late_peer)
    assert f"replica-announce-ip {me}.{nodes}" in said
    replicaof = [line for line in said.splitlines() if line.startswith("replicaof")]
    assert replicaof == ([f"replicaof {follows}.{nodes} 6379"] if follows else []), errors
    assert ("does not answer yet" in errors) == bool(late)
    assert "masterauth s3cret" in said
    arguments = next(line for line in said.splitlines() if line.startswith("arguments:"))
    assert "s3cret" not in arguments and "--maxmemory" in arguments
    # Its Sentinel monitors the same primary, by name.
    watched, _ = start_script(tmp_path, sentinel, {**named, "me": me}, late_peer)
    primary = follows or me
    assert f"sentinel monitor memory {primary}.{nodes} 6379 2" in watched
    assert f"sentinel announce-ip {me}.{nodes}" in watched


def test_the_sentinels_timeouts_and_the_write_guard_follow_the_spec() -> None:
    bot = with_memory(example("all-platforms"), {"replicas": 3})
    pod = by_ref(render_all(bot, image=IMAGE))["StatefulSet", "tertulia-memory"]["spec"][
        "template"
    ]["spec"]
    redis, sentinel = pod["containers"]
    env = {item["name"]: item.get("value") for item in sentinel["env"]}
    # Longer than a busy node's pauses (Redis's example configuration: 30 s; Bitnami: 60 s).
    assert (env["DOWN_AFTER"], env["FAILOVER_TIMEOUT"]) == ("15000", "60000")
    assert "--min-replicas-to-write" not in redis["args"], "Redis's default: never refuse"
    # The handover fits the grace period, with time for the server to stop after it.
    assert int(env["HANDOVER_SECONDS"]) + 10 <= pod["terminationGracePeriodSeconds"] == 30
    for container in (redis, sentinel):
        assert container["lifecycle"]["preStop"]["exec"]["command"][:2] == ["sh", "-c"]
    # A replica is Ready once its copy is in step: a rolling restart waits for that.
    ready = redis["readinessProbe"]["exec"]["command"][2]
    assert "^role:master" in ready and "^master_link_status:up" in ready

    tuned = with_memory(
        example("all-platforms"),
        {
            "replicas": 3,
            "sentinel": {
                "downAfterMilliseconds": 30000,
                "failoverTimeoutMilliseconds": 180000,
                "minReplicasToWrite": 1,
            },
        },
    )
    redis, sentinel = by_ref(render_all(tuned, image=IMAGE))["StatefulSet", "tertulia-memory"][
        "spec"
    ]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in sentinel["env"]}
    assert (env["DOWN_AFTER"], env["FAILOVER_TIMEOUT"]) == ("30000", "180000")
    arguments = redis["args"]
    option = {arguments[i]: arguments[i + 1] for i in range(len(arguments) - 1)}
    assert option["--min-replicas-to-write"] == "1"
    assert option["--min-replicas-max-lag"] == "10"
    # One Redis has no handover to make and no Sentinel.
    single = by_ref(render_all(example("all-platforms"), image=IMAGE))
    (alone,) = single["StatefulSet", "tertulia-memory"]["spec"]["template"]["spec"]["containers"]
    assert "lifecycle" not in alone


NODES = "tertulia-memory-nodes.bots.svc"


def hand_over(
    tmp_path: Path,
    role: str,
    replicas: str,
    named: list[str],
    refusals: int = 0,
    switching_polls: int = 0,
    link: str = "up",
) -> tuple[list[str], str]:
    """Run the Redis container's preStop with a redis-cli that is `role`, reports `replicas`
    (INFO replication's lines), whose Sentinel refuses `refusals` failovers before it takes
    one, and names each of `named` in turn as the primary; returns the commands it was
    given, and what the script printed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    calls, names = tmp_path / "calls", tmp_path / "names"
    names.write_text("".join(f"{name}.{NODES}\n" for name in named))
    refused = tmp_path / "refused"
    refused.write_text("x\n" * refusals)
    switching = tmp_path / "switching"
    switching.write_text("x\n" * switching_polls)
    cli = bin_dir / "redis-cli"
    cli.write_text(
        f"""#!/bin/sh
echo "$*" >> {calls}
case "$*" in
  *"-h "*" role") echo master ;;
  *" role") echo {role} ;;
  *"-h "*"info replication")
    # A replica, in step with the primary it follows: this one, until told another.
    peer="$(echo "$*" | sed 's/.*-h \\([^ ]*\\) .*/\\1/')"
    following="$(cat "{tmp_path}/follows-$peer" 2>/dev/null || echo tertulia-memory-0.{NODES})"
    printf 'role:slave\r\nmaster_host:%s\r\nmaster_link_status:{link}\r\n' "$following"
    printf 'slave_repl_offset:120\r\n' ;;
  *"-h "*" replicaof "*)
    peer="$(echo "$*" | sed 's/.*-h \\([^ ]*\\) .*/\\1/')"
    echo "$*" | sed 's/.* replicaof \\([^ ]*\\) .*/\\1/' > "{tmp_path}/follows-$peer"; echo OK ;;
  *"info replication")
    printf 'role:{role}\r\nconnected_slaves:1\r\n{replicas}master_repl_offset:120\r\n' ;;
  *"get-master-addr-by-name"*)
    head -n 1 {names}; [ "$(wc -l < {names})" -gt 1 ] && sed -i 1d {names}; echo 6379 ;;
  *"sentinel master "*)
    # The Sentinels' record of the primary: mid-failover a while, then switched.
    if [ -s {switching} ]; then
      sed -i 1d {switching}; flags=master,failover_in_progress; ip=tertulia-memory-0.{NODES}
    else flags=master; ip="$(head -n 1 {names})"; fi
    printf 'name\nmemory\nip\n%s\nport\n6379\nflags\n%s\n' "$ip" "$flags" ;;
  *"sentinel failover"*)
    if [ -s {refused} ]; then
      sed -i 1d {refused}; echo "INPROG Failover already in progress"
    else echo OK; fi ;;
  *) echo OK ;;
esac
"""
    )
    cli.chmod(0o755)
    # Its waits are noted, not waited.
    (bin_dir / "sleep").write_text("#!/bin/sh\n")
    (bin_dir / "sleep").chmod(0o755)
    bot = with_memory(example("all-platforms"), {"replicas": 3})
    redis, _ = by_ref(render_all(bot, image=IMAGE))["StatefulSet", "tertulia-memory"]["spec"][
        "template"
    ]["spec"]["containers"]
    env = {item["name"]: item.get("value", "") for item in redis["env"]}
    env |= {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "POD_NAME": "tertulia-memory-0",
        "HOOK_LOG": "/dev/stdout",
    }
    done = subprocess.run(
        redis["lifecycle"]["preStop"]["exec"]["command"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    said = calls.read_text().splitlines() if calls.exists() else []
    return [line.replace("--no-auth-warning ", "") for line in said], done.stdout + done.stderr


def test_a_primary_that_stops_pauses_writes_hands_over_and_follows_the_new_one(
    tmp_path: Path,
) -> None:
    online = "slave0:ip=tertulia-memory-1,port=6379,state=online,offset=120,lag=0\r\n"
    me, next_one = "tertulia-memory-0", "tertulia-memory-1"
    calls, said = hand_over(tmp_path, "master", online, [me, me, next_one], switching_polls=2)
    steps = [c for c in calls if "info" not in c and "get-master" not in c]
    assert steps == [
        "role",
        "client pause 20000 write",
        "-p 26379 sentinel failover memory",
        # The chosen replica says it is the primary, and the Sentinels' record of the primary
        # is switched to it (twice still mid-failover), before this server follows it.
        *[f"-h {next_one}.{NODES} -p 6379 role", "-p 26379 sentinel master memory"] * 3,
        # The other replica, which the Sentinels did not reconfigure, follows it too.
        f"-h tertulia-memory-2.{NODES} replicaof {next_one}.{NODES} 6379",
        f"replicaof {next_one}.{NODES} 6379",
        "client unpause",
    ], said
    # Before the failover, each replica was asked whether it follows this server in step.
    before = calls[: calls.index("-p 26379 sentinel failover memory")]
    for peer in ("tertulia-memory-1", "tertulia-memory-2"):
        assert f"-h {peer}.{NODES} info replication" in before
    assert f"handed the primary over to {next_one}.{NODES}" in said
    assert "not every replica" not in said


def test_a_replica_out_of_step_is_waited_for_before_the_failover(tmp_path: Path) -> None:
    online = "slave0:ip=tertulia-memory-1,port=6379,state=online,offset=120,lag=0\r\n"
    me, next_one = "tertulia-memory-0", "tertulia-memory-1"
    calls, said = hand_over(tmp_path, "master", online, [me, next_one], link="down")
    # Its link to this server is down: asked again every 0.1 s for 5 s, then the handover
    # goes on with what it has, and says so.
    before = calls[: calls.index("-p 26379 sentinel failover memory")]
    assert before.count(f"-h tertulia-memory-1.{NODES} info replication") == 50
    assert "not every replica holds every write" in said
    assert f"handed the primary over to {next_one}.{NODES}" in said


def test_a_failover_refused_while_the_sentinels_learn_of_a_new_replica_is_asked_again(
    tmp_path: Path,
) -> None:
    online = "slave0:ip=tertulia-memory-2,port=6379,state=online,offset=120,lag=0\r\n"
    me, next_one = "tertulia-memory-0", "tertulia-memory-2"
    calls, said = hand_over(tmp_path, "master", online, [me] * 2 + [next_one], refusals=2)
    # Refused twice (no replica it knows of; the last failover still reconfiguring), 2 s
    # apart, then taken.
    assert calls.count("-p 26379 sentinel failover memory") == 3, calls
    assert said.count("refused the failover for now") == 2
    assert calls[-2:] == [f"replicaof {next_one}.{NODES} 6379", "client unpause"]


def test_a_replica_stops_at_once_and_a_primary_waits_a_while_for_a_replica(
    tmp_path: Path,
) -> None:
    calls, _ = hand_over(tmp_path / "replica", "slave", "", [])
    assert calls == ["role"]
    # A replica still copying the data is waited for, 10 s at most, then the primary stops.
    syncing = "slave0:ip=tertulia-memory-1,port=6379,state=wait_bgsave,offset=0,lag=0\r\n"
    calls, said = hand_over(tmp_path / "alone", "master", syncing, [])
    assert calls == ["role"] + ["info replication"] * 20
    assert "no replica online" in said


def test_metrics_are_on_a_port_of_their_own_that_no_ingress_reaches() -> None:
    manifests = by_ref(render_all(example("all-platforms"), image=IMAGE))
    gateway = manifests["Service", "tertulia-gateway"]
    ports = {port["name"]: port for port in gateway["spec"]["ports"]}
    assert ports["metrics"]["port"] == 9090 and ports["metrics"]["targetPort"] == "metrics"
    assert gateway["metadata"]["labels"]["tertulia.dev/metrics"] == "prometheus"
    config = yaml.safe_load(manifests["ConfigMap", "tertulia-gateway"]["data"]["gateway.yaml"])
    assert config["metrics_port"] == 9090 and config["api_docs"] is False
    container = manifests["Deployment", "tertulia-gateway"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert {"name": "metrics", "containerPort": 9090} in container["ports"]
    # llama.cpp serves /metrics beside its API: the Service's metrics port leads there.
    model = {port["name"]: port for port in manifests["Service", "tertulia-model"]["spec"]["ports"]}
    assert model["metrics"]["targetPort"] == "http"


def test_each_bot_presents_a_key_of_its_own_bound_to_its_platforms_users() -> None:
    manifests = by_ref(render_all(example("all-platforms"), image=IMAGE))
    for platform in ("slack", "discord", "telegram"):
        pod = manifests["Deployment", f"tertulia-{platform}"]["spec"]["template"]["spec"]
        keys = [
            volume["secret"]
            for volume in pod["volumes"]
            if volume["secret"]["secretName"] == "tertulia-api-keys"
        ]
        assert keys == [
            {"secretName": "tertulia-api-keys", "items": [{"key": platform, "path": "gateway-key"}]}
        ]
    config = yaml.safe_load(manifests["ConfigMap", "tertulia-gateway"]["data"]["gateway.yaml"])
    assert config["user_prefixes"] == {
        "slack": "slack:",
        "discord": "discord:",
        "telegram": "telegram:",
    }


def with_spec(bot: ChatBot, change: dict[str, Any]) -> ChatBot:
    """`bot` with `change` merged into its spec (one level deep per section)."""
    spec = bot.spec.model_dump(by_alias=True, exclude_none=True)
    for section, values in change.items():
        if isinstance(values, dict):
            spec[section] = {**spec.get(section, {}), **values}
        else:
            spec[section] = values
    return bot.model_copy(update={"spec": type(bot.spec).model_validate(spec)})


# A managed Redis, as memory.external names it.
EXTERNAL_REDIS = {
    "url": "rediss://cache.example.com:6380/0",
    "passwordSecretRef": {"name": "managed-redis", "key": "auth"},
    "caSecretRef": {"name": "managed-redis-ca", "key": "ca.pem"},
}


def with_external_redis(bot: ChatBot) -> ChatBot:
    return with_spec(bot, {"gateway": {"memory": {"external": EXTERNAL_REDIS}}})


# Weaviate Cloud, as knowledgeBase.external names it.
EXTERNAL_WEAVIATE = {
    "url": "https://harbour.c0.europe-west3.gcp.weaviate.cloud",
    "grpcUrl": "https://grpc-harbour.c0.europe-west3.gcp.weaviate.cloud",
    "apiKeySecretRef": {"name": "weaviate-cloud", "key": "admin-key"},
}


def with_external_weaviate(bot: ChatBot) -> ChatBot:
    return with_spec(bot, {"knowledgeBase": {"external": EXTERNAL_WEAVIATE}})


def budgets(bot: ChatBot) -> dict[str, dict[str, Any]]:
    """The PodDisruptionBudgets rendered, by the component they cover."""
    return {
        m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]: m
        for m in render_all(bot, image=IMAGE)
        if m["kind"] == "PodDisruptionBudget"
    }


def test_components_with_several_replicas_get_a_disruption_budget_of_one_at_a_time() -> None:
    bot = example("local")
    assert budgets(bot) == {}  # one replica each: a budget would only block drains

    scaled_bot = with_spec(bot, {"gateway": {"replicas": 2}, "model": {"replicas": 3}})
    scaled = budgets(scaled_bot)
    assert set(scaled) == {"gateway", "model"}
    for component, budget in scaled.items():
        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        workload = next(
            m
            for m in render_all(scaled_bot, image=IMAGE)
            if m["kind"] in ("Deployment", "StatefulSet")
            and m["metadata"]["labels"]["app.kubernetes.io/component"] == component
        )
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= template_labels.items()

    autoscaled = with_spec(bot, {"gateway": {"autoscaling": {"minReplicas": 1}}})
    assert set(budgets(autoscaled)) == {"gateway"}


def test_gateway_pods_spread_over_nodes_and_stay_long_enough_to_finish_their_answers() -> None:
    bot = with_spec(example("local"), {"gateway": {"drainSeconds": 300}})
    manifests = by_ref(render_all(bot, image=IMAGE))
    pod = manifests["Deployment", f"{bot.name}-gateway"]["spec"]["template"]["spec"]
    # The drain's delay, its grace, and the kubelet's margin.
    assert pod["terminationGracePeriodSeconds"] == 5 + 300 + 5
    assert gateway_config(bot)["shutdown"] == {"drain_delay_seconds": 5, "grace_seconds": 300}
    keys = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(keys) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in keys.values():
        # A preference: a one-node cluster still runs every replica.
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
            "gateway"
        )


def test_an_external_redis_replaces_the_in_cluster_one_and_the_gateway_mounts_its_secrets() -> None:
    external = EXTERNAL_REDIS
    bot = with_external_redis(example("all-platforms"))
    manifests = render_all(bot, image=IMAGE)
    components = {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in manifests}
    assert "memory" not in components  # no Redis, no Service, no policy for one
    config = gateway_config(bot)
    assert config["redis_url"] == external["url"]
    pod = by_ref(manifests)["Deployment", f"{bot.name}-gateway"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert volumes["memory-password"] == {
        "secretName": "managed-redis",
        "items": [{"key": "auth", "path": "password"}],
    }
    assert volumes["memory-ca"] == {
        "secretName": "managed-redis-ca",
        "items": [{"key": "ca.pem", "path": "ca.crt"}],
    }
    mounted = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert config["redis_password_file"] == f"{mounted['memory-password']}/password"
    assert config["redis_ca_file"] == f"{mounted['memory-ca']}/ca.crt"


def test_knowledge_base_backups_run_on_a_schedule_into_a_volume_weaviate_writes() -> None:
    backup = {"schedule": "30 2 * * *", "storage": "5Gi"}
    bot = with_spec(example("vllm-gpu-slack-kb"), {"knowledgeBase": {"backup": backup}})
    manifests = by_ref(render_all(bot, image=IMAGE))
    weaviate = manifests["StatefulSet", "harbour-knowledge-base"]["spec"]["template"]["spec"]
    (container,) = weaviate["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["ENABLE_MODULES"] == "backup-filesystem"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["BACKUP_FILESYSTEM_PATH"] == mounts["backups"]
    (volume,) = [v for v in weaviate["volumes"] if v["name"] == "backups"]
    claim = manifests["PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"

    cron = manifests["CronJob", "harbour-knowledge-backup"]["spec"]
    assert cron["schedule"] == "30 2 * * *"
    assert cron["concurrencyPolicy"] == "Forbid"
    job_pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    (runner,) = job_pod["containers"]
    assert runner["image"] == IMAGE
    assert runner["args"] == ["kb", "backup"]
    runner_env = {item["name"]: item["value"] for item in runner["env"]}
    assert runner_env["TERTULIA_KB_WEAVIATE_URL"] == "http://harbour-knowledge-base.bots.svc:8080"
    assert runner_env["TERTULIA_KB_COLLECTION"] == "harbour"
    key_file = runner_env["TERTULIA_KB_API_KEY_FILE"]
    assert any(key_file.startswith(m["mountPath"]) for m in runner["volumeMounts"])
    # The backup's pods, and only with backups on, may reach Weaviate.
    assert "knowledge-backup" in policy_clients(manifests, "harbour-knowledge-base-ingress")
    without = by_ref(render_all(example("vllm-gpu-slack-kb"), image=IMAGE))
    assert "knowledge-backup" not in policy_clients(without, "harbour-knowledge-base-ingress")
    assert ("CronJob", "harbour-knowledge-backup") not in without


def test_a_knowledge_base_of_three_nodes_is_one_weaviate_cluster_with_a_copy_on_each() -> None:
    bot = with_spec(example("vllm-gpu-slack-kb"), {"knowledgeBase": {"replicas": 3}})
    manifests = by_ref(render_all(bot, image=IMAGE))
    weaviate = manifests["StatefulSet", "harbour-knowledge-base"]["spec"]
    assert weaviate["replicas"] == 3
    assert weaviate["podManagementPolicy"] == "Parallel"
    # The nodes find each other through a headless Service that lists them before they are ready.
    nodes = manifests["Service", weaviate["serviceName"]]["spec"]
    assert nodes["clusterIP"] == "None"
    assert nodes["publishNotReadyAddresses"] is True
    pod = weaviate["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["CLUSTER_HOSTNAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # Each node joins the others by their pods' names, once the first one's resolves.
    names = [f"harbour-knowledge-base-{i}.{weaviate['serviceName']}.bots.svc" for i in range(3)]
    assert env["CLUSTER_JOIN"]["value"] == ",".join(names)
    (first_node,) = pod["initContainers"]
    assert first_node["image"] == IMAGE and first_node["args"][0] == names[0]
    voters = env["RAFT_JOIN"]["value"].split(",")
    assert voters == [f"harbour-knowledge-base-{index}" for index in range(3)]
    assert env["RAFT_BOOTSTRAP_EXPECT"]["value"] == "3"
    ports = {port["containerPort"] for port in container["ports"]}
    assert {int(env[name]["value"]) for name in ("RAFT_PORT", "CLUSTER_GOSSIP_BIND_PORT")} <= ports
    hosts = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert "matchLabelKeys" not in hosts["kubernetes.io/hostname"]
    assert budgets(bot)["knowledge-base"]["spec"]["maxUnavailable"] == 1
    # Each node reaches the others; the gateway reads one copy of three.
    assert "knowledge-base" in policy_clients(manifests, "harbour-knowledge-base-ingress")
    gateway = yaml.safe_load(manifests["ConfigMap", "harbour-gateway"]["data"]["gateway.yaml"])
    assert gateway["knowledge_base"]["replication_factor"] == 3


def test_a_single_weaviate_keeps_the_node_name_its_data_is_recorded_under() -> None:
    manifests = by_ref(render_all(example("vllm-gpu-slack-kb"), image=IMAGE))
    weaviate = manifests["StatefulSet", "harbour-knowledge-base"]["spec"]
    (container,) = weaviate["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["CLUSTER_HOSTNAME"] == "node1"
    assert "RAFT_JOIN" not in env
    assert weaviate["serviceName"] == "harbour-knowledge-base"
    assert "knowledge-base" not in budgets(example("vllm-gpu-slack-kb"))
    assert "knowledge-base" not in policy_clients(manifests, "harbour-knowledge-base-ingress")


def test_an_external_weaviate_is_used_with_its_key_and_none_is_run() -> None:
    bot = with_external_weaviate(example("vllm-gpu-slack-kb"))
    manifests = by_ref(render_all(bot, image=IMAGE))
    labels = [m["metadata"]["labels"] for m in manifests.values()]
    components = {found["app.kubernetes.io/component"] for found in labels}
    assert "knowledge-base" not in components  # no Weaviate, Service, policy or budget
    gateway = yaml.safe_load(manifests["ConfigMap", "harbour-gateway"]["data"]["gateway.yaml"])
    knowledge = gateway["knowledge_base"]
    assert knowledge["weaviate_url"] == EXTERNAL_WEAVIATE["url"]
    assert knowledge["grpc_url"] == EXTERNAL_WEAVIATE["grpcUrl"]
    pod = manifests["Deployment", "harbour-gateway"]["spec"]["template"]["spec"]
    (key,) = [v for v in pod["volumes"] if v["name"] == "knowledge-base-key"]
    (item,) = key["secret"]["items"]
    assert key["secret"]["secretName"] == "weaviate-cloud" and item["key"] == "admin-key"
    assert knowledge["api_key_file"].endswith("/" + item["path"])
    # The ingest Job still runs here, against the external Weaviate with the same key.
    (ingest,) = [m for (kind, _), m in manifests.items() if kind == "Job"]
    job_pod = ingest["spec"]["template"]["spec"]
    assert key in job_pod["volumes"]
    env = {e["name"]: e["value"] for e in job_pod["containers"][0]["env"]}
    assert env["TERTULIA_KB_WEAVIATE_URL"] == EXTERNAL_WEAVIATE["url"]
    assert env["TERTULIA_KB_GRPC_URL"] == EXTERNAL_WEAVIATE["grpcUrl"]


S3_BACKUP = {
    "schedule": "0 4 * * *",
    "s3": {
        "bucket": "harbour-backups",
        "path": "knowledge",
        "endpoint": "minio.storage.svc:9000",
        "region": "eu-west-1",
        "insecure": True,
        "accessKeyIdSecretRef": {"name": "backup-bucket", "key": "access-key"},
        "secretAccessKeySecretRef": {"name": "backup-bucket", "key": "secret-key"},
    },
}


def test_knowledge_base_backups_to_s3_need_no_volume_and_take_the_buckets_credentials() -> None:
    bot = with_spec(
        example("vllm-gpu-slack-kb"), {"knowledgeBase": {"replicas": 3, "backup": S3_BACKUP}}
    )
    manifests = by_ref(render_all(bot, image=IMAGE))
    assert not [ref for ref in manifests if ref[0] == "PersistentVolumeClaim"]
    weaviate = manifests["StatefulSet", "harbour-knowledge-base"]["spec"]["template"]["spec"]
    (container,) = weaviate["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["ENABLE_MODULES"]["value"] == "backup-s3"
    assert {name: env[name]["value"] for name in env if name.startswith("BACKUP_S3_")} == {
        "BACKUP_S3_BUCKET": "harbour-backups",
        "BACKUP_S3_PATH": "knowledge",
        "BACKUP_S3_ENDPOINT": "minio.storage.svc:9000",
        "BACKUP_S3_USE_SSL": "false",
    }
    assert env["AWS_REGION"]["value"] == "eu-west-1"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "backup-bucket", "key": "secret-key"}
    }
    assert "BACKUP_FILESYSTEM_PATH" not in env
    assert "backups" not in {v["name"] for v in weaviate.get("volumes", [])}
    # The CronJob's `kb backup` asks for the S3 backend.
    cron = manifests["CronJob", "harbour-knowledge-backup"]["spec"]
    (runner,) = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert {"name": "TERTULIA_KB_BACKUP_BACKEND", "value": "s3"} in runner["env"]


def test_a_node_waits_for_the_first_nodes_name_and_says_so_when_it_never_resolves() -> None:
    bot = with_spec(example("vllm-gpu-slack-kb"), {"knowledgeBase": {"replicas": 2}})
    manifests = by_ref(render_all(bot, image=IMAGE))
    pod = manifests["StatefulSet", "harbour-knowledge-base"]["spec"]["template"]["spec"]
    (wait,) = pod["initContainers"]
    assert wait["command"][0] == "python"
    script = [sys.executable, *wait["command"][1:]]
    assert subprocess.run([*script, "localhost", "5"], check=False).returncode == 0
    never = subprocess.run(
        [*script, "node-0.nowhere.invalid", "1"], capture_output=True, text=True, check=False
    )
    assert never.returncode == 1
    assert "node-0.nowhere.invalid did not resolve within 1 s" in never.stderr


def test_weaviate_is_given_the_time_its_own_chart_gives_it() -> None:
    """weaviate/weaviate-helm's values.yaml: livenessProbe initialDelaySeconds 900, period 10,
    timeout 3, failureThreshold 30; readinessProbe timeout 3, failureThreshold 3;
    terminationGracePeriodSeconds 600. A start that reads a large index or a slow disk must
    not be restarted in a loop."""
    manifests = by_ref(render_all(example("vllm-gpu-slack-kb"), image=IMAGE))
    pod = manifests["StatefulSet", "harbour-knowledge-base"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 600
    [weaviate] = pod["containers"]
    startup, live = weaviate["startupProbe"], weaviate["livenessProbe"]
    # A startup probe stands for the chart's 900 s delay without holding back a quick start.
    assert startup["httpGet"]["path"] == live["httpGet"]["path"] == "/v1/.well-known/live"
    assert startup["periodSeconds"] * startup["failureThreshold"] == 900
    assert (live["periodSeconds"], live["timeoutSeconds"], live["failureThreshold"]) == (10, 3, 30)
    ready = weaviate["readinessProbe"]
    assert ready["httpGet"]["path"] == "/v1/.well-known/ready"
    assert (ready["timeoutSeconds"], ready["failureThreshold"]) == (3, 3)
