"""The ChatBot API (tertulia.dev/v1alpha1) as typed models: the one source of truth for the
CRD's schema (see `crd.py`) and for the operator, which parses every spec through them once.

Field descriptions become `kubectl explain` text; `rules` become CEL validations that the
API server enforces at admission, each naming the field it is about.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "tertulia.dev"
VERSION = "v1alpha1"
KIND = "ChatBot"
PLURAL = "chatbots"

# Children are named NAME-component (-knowledge-base is the longest suffix); names stay
# within the 63 characters of a DNS label.
MAX_NAME_LENGTH = 40


def rule(expression: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One CEL validation; `field_path` makes the API server name the field in its error."""
    validation = {"rule": expression, "message": message}
    if field_path:
        validation["fieldPath"] = field_path
    return validation


def cel(*validations: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(validations)}


class Spec(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


# What the API server accepts as the name of a Secret, ConfigMap or claim (a DNS-1123
# subdomain), and as a key of a Secret or ConfigMap (not `.` or `..`, nor starting with `..`).
# A reference is checked at admission, so no spec can name a path (`../../kube-system/...`)
# that the operator would read or a pod would mount.
OBJECT_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
OBJECT_KEY = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"
# One segment of a path inside a model source: anything but `.` and `..`, never empty; and a
# claim's name. Written without backslashes, which CEL string literals would take as escapes.
_SEGMENT = r"(?:[^/.]|[.][^/.]|[.][.][^/])[^/]*"
_CLAIM = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"


def object_name(description: str) -> Any:
    """The field of an object's name in the ChatBot's namespace."""
    return Field(min_length=1, max_length=253, pattern=OBJECT_NAME, description=description)


class SecretKeyRef(Spec):
    """A key of a Secret in the ChatBot's namespace."""

    name: str = object_name("Name of the Secret.")
    key: str = Field(
        min_length=1, max_length=253, pattern=OBJECT_KEY, description="Key within the Secret."
    )


class SecretRef(Spec):
    """A Secret in the ChatBot's namespace."""

    name: str = object_name("Name of the Secret.")


class LocalRef(Spec):
    """A ConfigMap or PersistentVolumeClaim in the ChatBot's namespace."""

    name: str = object_name("Name of the object.")


# Kubernetes core types passed through to the pods as they are; the API server validates
# them when the operator creates the Deployment.
KubernetesObject = dict[str, Any]


# Requests and limits replace a component's defaults as a whole.
RESOURCES_DESCRIPTION = (
    "CPU and memory requests and limits (core/v1 ResourceRequirements); replaces the "
    "component's defaults."
)


class CacheSpec(Spec):
    """Volumes for model weights, kept across restarts: one claim per replica
    (ReadWriteOnce), or one claim all replicas share (ReadWriteMany)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule("isQuantity(self.size)", "size must be a quantity, such as 50Gi", ".size"),
            # Per-replica claims come from a StatefulSet's claim templates, which cannot
            # change; a shared claim can grow where its class allows, never shrink. A new
            # access mode makes new claims, so anything goes with it.
            rule(
                "self.accessMode != oldSelf.accessMode || "
                "(self.accessMode == 'ReadWriteMany' ? "
                "quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0 : "
                "self.size == oldSelf.size)",
                "size cannot change in place: a ReadWriteOnce cache's claims come from claim "
                "templates (expand the claims themselves), a ReadWriteMany claim can only grow",
                ".size",
            ),
            rule(
                "self.accessMode != oldSelf.accessMode || "
                "(has(self.storageClassName) == has(oldSelf.storageClassName) && "
                "(!has(self.storageClassName) || "
                "self.storageClassName == oldSelf.storageClassName))",
                "storageClassName cannot change in place: a claim keeps its class",
                ".storageClassName",
            ),
        )
    )

    size: str = Field("50Gi", description="Requested storage, as a Kubernetes quantity.")
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = Field(
        "ReadWriteOnce",
        description="ReadWriteOnce: each replica gets a claim of its own (a StatefulSet's claim "
        "templates) and downloads its own copy, on any node. ReadWriteMany: one claim shared by "
        "every replica, downloaded once; needs a class that offers it (NFS, CephFS, EFS, "
        "Filestore).",
    )
    storage_class_name: str | None = Field(
        None, description="StorageClass of the claim; the cluster's default when unset."
    )


# What a held request waits for by default: a replica's start without its weights' fetch (a
# node, an image, loading; on GPUs a 10 GB image and CUDA graphs too), and the fetch, at
# 128 MiB/s, of a cache's worth of weights.
CPU_START_SECONDS = 240
GPU_START_SECONDS = 600
SECONDS_PER_GIB = 8
MAX_QUEUE_TIMEOUT_SECONDS = 3600


class ModelToolsSpec(Spec):
    """Whether the model calls tools, and how its engine reads the calls out of its words."""

    enabled: bool = Field(
        False,
        description="The model calls tools: requests to the OpenAI-compatible API with `tools`, "
        "`tool_choice` and tool messages pass through to it (refused with 422 when off), and "
        "the engine runs with tool calling: llama.cpp with its Jinja chat templates "
        "(`--jinja`), vLLM with `--enable-auto-tool-choice` and `parser`; Ollama calls tools "
        "for models whose template has them.",
    )
    parser: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="vLLM's `--tool-call-parser` for the model's call format (hermes for Qwen "
        "and Hermes, llama3_json for Llama 3.1+, mistral, ...: vLLM's tool calling docs list "
        "them). Required for vLLM with tools on; vLLM alone.",
    )


class ModelAutoscalingSpec(Spec):
    """The gateway scales the model's replicas on the requests in flight, across every
    gateway replica, through the scale subresource (the one `kubectl scale` and an HPA use);
    at zero replicas a request is held until one is ready."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                "minReplicas must not exceed maxReplicas",
                ".minReplicas",
            )
        )
    )

    min_replicas: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Fewest replicas; 0 scales the model to zero when idle. Unset: 1 for a "
        "model on GPUs (a cold GPU start takes minutes: a node, a 10 GB image, the weights, "
        "vLLM's CUDA graphs), 0 on CPUs.",
    )
    max_replicas: int = Field(4, ge=1, le=64, description="Most replicas.")
    target_in_flight: int = Field(
        4,
        ge=1,
        le=10000,
        description="Requests in flight (or waiting) per replica to aim for: about what one "
        "replica serves at once without slowing (llama.cpp: its slots, 4 by default; vLLM: "
        "tens to hundreds).",
    )
    scale_down_delay_seconds: int = Field(
        300,
        ge=0,
        le=86400,
        description="Replicas go, down to minReplicas, only once the load has asked for fewer "
        "for this long; replicas come at once.",
    )
    queue_length: int = Field(
        100,
        ge=0,
        le=100000,
        description="Requests each gateway replica holds while the model has no ready "
        "replica; more are answered 503 with Retry-After.",
    )
    queue_timeout_seconds: int | None = Field(
        None,
        ge=1,
        le=MAX_QUEUE_TIMEOUT_SECONDS,
        description="How long a held request waits for a replica before it is answered 503 "
        "with Retry-After: longer than a replica takes to start and load its weights. Unset: "
        "240 s on CPUs, 600 s on GPUs, plus 8 s for each GiB of model.cache.size (weights "
        "fetched at 128 MiB/s). The bots wait up to 300 s for an answer to begin.",
    )


class ModelSpec(Spec):
    """The model server: vLLM on GPUs, Ollama, llama.cpp, or an existing OpenAI-compatible URL."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "self.engine == 'endpoint' || has(self.name) || has(self.source)",
                "name or source is required unless engine is endpoint",
                ".name",
            ),
            rule(
                "self.engine != 'endpoint' || !has(self.source)",
                "source must be unset when engine is endpoint: no weights are loaded",
                ".source",
            ),
            rule(
                "self.engine != 'llamacpp' || !has(self.source) || "
                f"self.source.matches('^(hf://{_SEGMENT}/{_SEGMENT}(/{_SEGMENT})+|"
                f"https?://[^/]+/.+|pvc://{_CLAIM}(/{_SEGMENT})+)$')",
                "llama.cpp loads one GGUF file: hf://OWNER/REPO/FILE.gguf, https://HOST/FILE.gguf "
                "or pvc://CLAIM/PATH/FILE.gguf",
                ".source",
            ),
            rule(
                "self.engine != 'vllm' || !has(self.source) || "
                f"self.source.matches('^(hf://{_SEGMENT}/{_SEGMENT}/?|"
                f"pvc://{_CLAIM}(/{_SEGMENT})*/?)$')",
                "vLLM loads a repository: hf://OWNER/REPO or pvc://CLAIM/PATH",
                ".source",
            ),
            rule(
                "self.engine != 'ollama' || !has(self.source) || "
                "self.source.matches('^ollama://[A-Za-z0-9][A-Za-z0-9._:/-]*$')",
                "Ollama pulls from its library: ollama://NAME:TAG",
                ".source",
            ),
            rule(
                "self.engine != 'ollama' || !has(self.args) || size(self.args) == 0",
                "Ollama's server takes no arguments: set OLLAMA_* variables in env instead",
                ".args",
            ),
            rule(
                "self.engine != 'ollama' || !has(self.name) || "
                "self.name.matches('^[A-Za-z0-9][A-Za-z0-9._:/-]*$')",
                "an Ollama model is NAME or NAME:TAG (letters, digits, '.', '_', '-', ':', '/')",
                ".name",
            ),
            rule(
                "self.engine == 'vllm' || !has(self.gpuMemoryUtilization)",
                "gpuMemoryUtilization is a vLLM setting",
                ".gpuMemoryUtilization",
            ),
            rule(
                "!has(self.sha256) || (self.engine == 'llamacpp' && has(self.source) && "
                "!self.source.startsWith('pvc://'))",
                "sha256 checks a file llama.cpp downloads: an hf:// or https:// source",
                ".sha256",
            ),
            rule(
                "!has(self.requireApiKey) || !self.requireApiKey || self.engine == 'llamacpp' "
                "|| self.engine == 'vllm'",
                "requireApiKey needs a server that checks keys, llama.cpp or vLLM (Ollama checks "
                "none; an endpoint's key is apiKeySecretRef)",
                ".requireApiKey",
            ),
            rule(
                "self.engine != 'endpoint' || has(self.endpoint)",
                "endpoint is required when engine is endpoint",
                ".endpoint",
            ),
            rule(
                "self.engine != 'endpoint' || !has(self.gpus) || self.gpus == 0",
                "gpus must be 0 when engine is endpoint: no model server runs",
                ".gpus",
            ),
            rule(
                "self.engine != 'vllm' || !has(self.gpus) || self.gpus >= 1",
                "vLLM needs at least one GPU",
                ".gpus",
            ),
            rule(
                "self.engine != 'vllm' || !has(self.tools) || !has(self.tools.enabled) "
                "|| !self.tools.enabled || has(self.tools.parser)",
                "vLLM calls tools with the parser of the model's call format: set "
                "tools.parser (hermes, llama3_json, mistral, ...)",
                ".tools.parser",
            ),
            rule(
                "self.engine == 'vllm' || !has(self.tools) || !has(self.tools.parser)",
                "tools.parser is vLLM's --tool-call-parser: llama.cpp and Ollama read calls "
                "from the model's chat template",
                ".tools.parser",
            ),
            rule(
                "self.engine != 'endpoint' || !has(self.autoscaling)",
                "autoscaling is for a model server the operator runs, not an endpoint",
                ".autoscaling",
            ),
        )
    )

    engine: Literal["vllm", "ollama", "llamacpp", "endpoint"] = Field(
        "vllm",
        description="vllm: vLLM on GPUs; ollama: Ollama; llamacpp: llama.cpp's server with a "
        "GGUF; endpoint: no model server, the gateway calls `endpoint`.",
    )
    name: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="The model: a Hugging Face id for vLLM (Qwen/Qwen2.5-7B-Instruct), a tag for "
        "Ollama (llama3.2:3b), a GGUF file already in the cache volume for llama.cpp "
        "(model.gguf). With `source`, the name clients use (the source's file or repository "
        "when unset). For endpoint, the model id to request; the endpoint's first model when "
        "unset.",
    )
    source: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^(hf|https?|pvc|ollama)://.+",
        description="Where the weights come from. llama.cpp: hf://OWNER/REPO/FILE.gguf or "
        "https://HOST/PATH/FILE.gguf, downloaded once into the cache volume (resumably, with "
        "tokenSecretRef as HF_TOKEN, and HF_ENDPOINT from env for a mirror), or "
        "pvc://CLAIM/PATH/FILE.gguf, read from a claim. vLLM: hf://OWNER/REPO or "
        "pvc://CLAIM/PATH. Ollama: ollama://NAME:TAG.",
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="The SHA-256 of the file `source` downloads (64 lowercase hex digits): "
        "checked after the download and each time a pod starts, so a file that changed on the "
        "hub or on the volume is never served. Only for a downloaded file (llama.cpp's "
        "hf:// or https:// source).",
    )
    endpoint: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^https?://",
        description="Base URL of an existing OpenAI-compatible API, ending in /v1 "
        "(engine endpoint).",
    )
    replicas: int = Field(
        1,
        ge=0,
        le=64,
        description="Model server replicas; `kubectl scale` sets it, and so does the "
        "autoscaler when `autoscaling` is set.",
    )
    autoscaling: ModelAutoscalingSpec | None = Field(
        None,
        description="Scale the replicas on load, between minReplicas (0: to zero when idle) "
        "and maxReplicas. Unset: `replicas` alone, which an HPA or KEDA may drive instead.",
    )
    tools: ModelToolsSpec = Field(
        default_factory=ModelToolsSpec,
        description="Tool calling: off unless enabled (see docs/tools.md).",
    )
    routing: Literal["affinity", "round-robin"] = Field(
        "affinity",
        description="How the gateway spreads requests over the ready replicas. affinity: "
        "every turn of a conversation to the same replica (consistent hashing with bounded "
        "load), whose prefix cache (llama.cpp's slots, vLLM's prefix caching, Ollama's loaded "
        "context) holds its history; a replica over 1.25 times its share of the requests in "
        "flight, and over what it serves at once (autoscaling.targetInFlight, else llama.cpp's "
        "--parallel or vLLM's --max-num-seqs in args, else 4), passes new turns on, to the "
        "replica that answered the conversation's latest turn away from home if any did. "
        "round-robin: each request to the next replica, "
        "for engines without a prefix cache. Not used with engine endpoint.",
    )
    gpus: int | None = Field(
        None,
        ge=0,
        le=8,
        description="GPUs per replica. vLLM: 1 when unset, and tensor parallelism spans them; "
        "ollama and llamacpp: 0 when unset.",
    )
    gpu_resource_name: str = Field(
        "nvidia.com/gpu", description="Extended resource the GPUs are requested as."
    )
    image: str | None = Field(
        None, description="Container image; the engine's pinned default when unset."
    )
    args: list[str] = Field(
        default_factory=list,
        description="Extra arguments for the engine (vLLM, llama.cpp); Ollama takes none.",
    )
    env: list[KubernetesObject] = Field(
        default_factory=list, description="Extra environment variables (core/v1 EnvVar)."
    )
    max_model_len: int | None = Field(
        None,
        ge=256,
        le=10_000_000,
        description="Context length in tokens: vLLM's --max-model-len (the model's own when "
        "unset; a long-context model may not fit a smaller GPU without it), llama.cpp's "
        "--ctx-size (8192 when unset), Ollama's OLLAMA_CONTEXT_LENGTH.",
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share of each GPU's memory vLLM may take (its default 0.9 when unset).",
    )
    startup_timeout_seconds: int = Field(
        3600,
        ge=60,
        le=86400,
        description="How long a replica may take to download and load its weights before it "
        "is restarted.",
    )
    resources: KubernetesObject | None = Field(
        None,
        description="CPU and memory requests and limits (core/v1 ResourceRequirements); the "
        "GPUs are added to them.",
    )
    runtime_class_name: str | None = Field(
        None, description="RuntimeClass of the model server's Pods (e.g. nvidia)."
    )
    priority_class_name: str | None = Field(
        None,
        description="PriorityClass of the model server's Pods; spec.priorityClassName when unset.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels to match.")
    tolerations: list[KubernetesObject] = Field(
        default_factory=list, description="Tolerations (core/v1 Toleration)."
    )
    affinity: KubernetesObject | None = Field(None, description="Affinity (core/v1 Affinity).")
    cache: CacheSpec | None = Field(
        None, description="A volume for weights; an emptyDir when unset."
    )
    token_secret_ref: SecretKeyRef | None = Field(
        None, description="A token for gated weights (HF_TOKEN for vLLM)."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="A bearer token the gateway sends to the endpoint (engine endpoint)."
    )
    require_api_key: bool = Field(
        False,
        description="The model server refuses any request without a key the operator "
        "generates (Secret NAME-server-keys, key `model`) and gives the gateway alone: a pod "
        "that gets past the NetworkPolicies still cannot use the model. llama.cpp and vLLM; "
        "llama.cpp then also asks it on /metrics, which is not scraped.",
    )

    @property
    def gpu_count(self) -> int:
        if self.gpus is not None:
            return self.gpus
        return 1 if self.engine == "vllm" else 0

    def min_replicas(self) -> int:
        """The fewest replicas the autoscaler keeps: as set, else one on GPUs (waking one
        takes minutes) and none on CPUs."""
        scaling = self.autoscaling
        if scaling is not None and scaling.min_replicas is not None:
            return scaling.min_replicas
        return 1 if self.gpu_count else 0

    def queue_timeout_seconds(self) -> int:
        """How long a held request waits for a woken replica: as set, else what the engine
        and the weights' fetch take (capped at the field's maximum)."""
        scaling = self.autoscaling
        if scaling is not None and scaling.queue_timeout_seconds is not None:
            return scaling.queue_timeout_seconds
        start = GPU_START_SECONDS if self.gpu_count else CPU_START_SECONDS
        weights = 0
        if self.cache is not None:
            from kubernetes.utils.quantity import parse_quantity  # the operator's alone

            gib = parse_quantity(self.cache.size) / 2**30  # type: ignore[no-untyped-call]
            weights = math.ceil(gib * SECONDS_PER_GIB)
        return min(start + weights, MAX_QUEUE_TIMEOUT_SECONDS)


class ExternalRedisSpec(Spec):
    """A Redis (or Valkey) the operator does not run: a managed service, reached over TLS
    with a password."""

    url: str = Field(
        pattern=r"^rediss://[^/\s]+(/[0-9]+)?$",
        max_length=2048,
        description="rediss://HOST:PORT/DB: TLS is required. No password in the URL: it comes "
        "from passwordSecretRef.",
    )
    password_secret_ref: SecretKeyRef = Field(description="The Secret key holding the password.")
    ca_secret_ref: SecretKeyRef | None = Field(
        None,
        description="The Secret key holding the CA certificate (PEM) that signed the server's; "
        "the system's CAs when unset.",
    )


class SentinelSpec(Spec):
    """How the Sentinels of a Redis with replicas decide and fail over (Redis's own settings
    of the same names)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "self.failoverTimeoutMilliseconds > self.downAfterMilliseconds",
                "failoverTimeoutMilliseconds must be longer than downAfterMilliseconds",
                ".failoverTimeoutMilliseconds",
            ),
        )
    )

    down_after_milliseconds: int = Field(
        15000,
        ge=1000,
        le=600_000,
        description="How long a primary may not answer before the Sentinels hold it gone and "
        "promote a replica. Only a crash waits for it: a primary's pod that is stopped (a "
        "rollout, a drain) hands over first. Shorter fails over sooner; too short, and a "
        "primary slowed by a busy node is replaced for nothing (Redis's example configuration "
        "says 30000, Bitnami's chart 60000).",
    )
    failover_timeout_milliseconds: int = Field(
        60000,
        ge=2000,
        le=3_600_000,
        description="How long a failover may take before the Sentinels try again, and how long "
        "they wait to fail the same primary over twice (Redis's default 180000).",
    )
    min_replicas_to_write: int = Field(
        0,
        ge=0,
        le=8,
        description="The primary refuses writes while fewer replicas than this are connected "
        "and within 10 s of it (Redis's min-replicas-to-write and min-replicas-max-lag): a "
        "primary cut off from the others then stops taking turns it would lose. 0 (Redis's "
        "default) never refuses; 1 or more also refuses for the second after a failover in "
        "which no replica follows the new primary yet, and those turns get whenUnavailable.",
    )


class MemorySpec(Spec):
    """Conversation memory, per user and conversation, in the ChatBot's Redis."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule("isQuantity(self.storage)", "storage must be a quantity, such as 1Gi", ".storage"),
            # Redis's claim comes from its StatefulSet's claim template, which cannot change.
            rule(
                "self.storage == oldSelf.storage",
                "storage cannot change once Redis has its claim: expand the claim "
                "(data-NAME-memory-0) where its class allows",
                ".storage",
            ),
            rule(
                "self.persistent == oldSelf.persistent",
                "persistent cannot change in place: delete and recreate the ChatBot",
                ".persistent",
            ),
            rule(
                "has(self.storageClassName) == has(oldSelf.storageClassName) && "
                "(!has(self.storageClassName) || "
                "self.storageClassName == oldSelf.storageClassName)",
                "storageClassName cannot change once Redis has its claim",
                ".storageClassName",
            ),
            # One Redis and a Sentinel group are StatefulSets of different Services.
            rule(
                "(self.replicas == 1) == (oldSelf.replicas == 1)",
                "replicas cannot change between 1 and more in place: delete and recreate the "
                "ChatBot, or set up the other one beside it",
                ".replicas",
            ),
            rule(
                "self.replicas == 1 || self.replicas >= 3",
                "replicas is 1 (one Redis) or 3 to 9 (a primary, replicas and a Sentinel beside "
                "each): Sentinels need three to agree that a primary is gone",
                ".replicas",
            ),
            # Redis's replication docs: a primary restarted without its data comes back empty,
            # and its replicas copy that, wiping their own.
            rule(
                "self.persistent || self.replicas == 1",
                "persistent: false cannot go with replicas: a primary restarting without its "
                "data would empty its replicas too (Redis's replication docs)",
                ".persistent",
            ),
            rule(
                "!has(self.sentinel) || self.sentinel.minReplicasToWrite < self.replicas",
                "sentinel.minReplicasToWrite must be less than replicas: the primary is one of "
                "them",
                ".sentinel.minReplicasToWrite",
            ),
        )
    )

    max_turns: int = Field(
        20, ge=0, le=1000, description="Turns kept per conversation; 0 turns memory off."
    )
    max_tokens: int = Field(
        2048, ge=0, le=1_000_000, description="History budget in a prompt, in tokens."
    )
    ttl_seconds: int = Field(
        604800, ge=60, description="A conversation idle this long is forgotten."
    )
    persistent: bool = Field(
        True,
        description="Keep Redis's data (conversations, rate limits, event claims) in an "
        "append-only file on a claim of its own, so a restarted pod has it all; false: an "
        "emptyDir, lost with the pod.",
    )
    storage: str = Field("1Gi", description="The claim's size, as a Kubernetes quantity.")
    when_unavailable: Literal["answer", "refuse"] = Field(
        "answer",
        description="While Redis cannot be reached: `answer` without the conversation's "
        "history, with a notice to the user, and without remembering the turn; or `refuse` "
        "(503 with Retry-After: the bots say to try again).",
    )
    storage_class_name: str | None = Field(
        None, description="StorageClass of the claim; the cluster's default when unset."
    )
    replicas: int = Field(
        1,
        ge=1,
        le=9,
        description="Redis servers. 1: one. 3 to 9: high availability as the Redis project "
        "builds it, a primary and its replicas with a Sentinel beside each; when the primary's "
        "pod fails, the Sentinels promote a replica within seconds and the gateway follows "
        "them. Replication is asynchronous: a turn stored in the last instant before a failure "
        "may be lost.",
    )
    sentinel: SentinelSpec = Field(
        default_factory=SentinelSpec,
        description="The Sentinels' timeouts and the primary's write guard, for replicas of 3 "
        "or more.",
        # In full: the API server checks a default against the rules, its own defaults unset.
        json_schema_extra={"default": SentinelSpec().model_dump(by_alias=True)},
    )
    external: ExternalRedisSpec | None = Field(
        None,
        description="Use this Redis instead of running one: the operator then renders no Redis "
        "and the in-cluster settings (persistent, storage, replicas, image, resources) do not "
        "apply. "
        "Configure its eviction as `volatile-lru` so rate limits and event claims stay.",
    )
    image: str | None = Field(None, description="Redis's image; the pinned default when unset.")
    resources: KubernetesObject | None = Field(
        None,
        description=RESOURCES_DESCRIPTION + " Redis holds up to three quarters of the memory "
        "limit (or request), then evicts the least recently used conversations; rate limits "
        "and event claims are never evicted.",
    )


class RateLimitSpec(Spec):
    """Per-user token buckets, shared by every gateway replica."""

    requests_per_minute: int = Field(
        20, ge=1, le=100_000, description="Sustained requests per user."
    )
    burst: int = Field(5, ge=1, le=10_000, description="Requests a user may make at once.")
    when_unavailable: Literal["allow", "refuse"] = Field(
        "allow",
        description="While Redis cannot be reached: `allow` requests without a limit (fail "
        "open) or `refuse` them with 503 and Retry-After (fail closed).",
    )


class ModerationSpec(Spec):
    """Blocked terms, matched as whole words on input and output."""

    blocked_terms: list[str] = Field(
        default_factory=list, max_length=1000, description="Terms to refuse."
    )


class IngressSpec(Spec):
    """An Ingress in front of the gateway."""

    host: str = Field(min_length=1, max_length=253, description="Host name to serve.")
    tls_secret_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=OBJECT_NAME,
        description="Secret with the TLS certificate.",
    )
    class_name: str | None = Field(
        None, description="IngressClass; the cluster's default when unset."
    )


class AutoscalingSpec(Spec):
    """A HorizontalPodAutoscaler for the gateway."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "self.minReplicas <= self.maxReplicas",
                "minReplicas must not exceed maxReplicas",
                ".minReplicas",
            )
        )
    )

    min_replicas: int = Field(1, ge=1, le=100, description="Fewest gateway replicas.")
    max_replicas: int = Field(5, ge=1, le=100, description="Most gateway replicas.")
    target_cpu_utilization: int = Field(
        70, ge=10, le=100, description="Average CPU percent to keep."
    )


class GatewaySpec(Spec):
    """The chat gateway: API, memory, limits, moderation."""

    replicas: int = Field(1, ge=1, le=100, description="Gateway replicas (without autoscaling).")
    image: str | None = Field(
        None, description="Tertulia's image; the operator's own version when unset."
    )
    system_prompt: str = Field(
        "You are a helpful assistant. Answer clearly and briefly.",
        max_length=32768,
        description="Leads every prompt.",
    )
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(512, ge=1, le=32768, description="Longest answer, in tokens.")
    # Defaulted by the API server too, so that its rules always see the storage it has.
    memory: MemorySpec = Field(
        default_factory=MemorySpec,
        description="Conversation memory.",
        json_schema_extra={"default": MemorySpec().model_dump(by_alias=True, exclude_none=True)},
    )
    rate_limit: RateLimitSpec = Field(default_factory=RateLimitSpec, description="Rate limits.")
    moderation: ModerationSpec = Field(default_factory=ModerationSpec, description="Moderation.")
    allowed_clients: list[KubernetesObject] = Field(
        default_factory=list,
        description="Who else may call the gateway's API, besides its bots and the ingress "
        "controllers the operator's chart names: core/v1 NetworkPolicyPeers "
        "(podSelector, namespaceSelector, ipBlock), e.g. an in-cluster application. Its "
        "NetworkPolicy refuses everyone else.",
    )
    api_keys_secret_ref: SecretRef | None = Field(
        None,
        description="A Secret with one key per client identity holding its API key. When unset "
        "the operator generates one with a key for the bots.",
    )
    ingress: IngressSpec | None = Field(
        None,
        description="Expose the gateway through an Ingress; it also routes the Slack events "
        "and Telegram webhook paths to their bots.",
    )
    autoscaling: AutoscalingSpec | None = Field(None, description="Scale the gateway on CPU.")
    resources: KubernetesObject | None = Field(None, description=RESOURCES_DESCRIPTION)
    api_docs: bool = Field(
        False,
        description="Serve the API's documentation (/docs, /redoc, /openapi.json) on the "
        "public port; /metrics and /stats are always on the `metrics` port (9090) only.",
    )
    drain_seconds: int = Field(
        120,
        ge=1,
        le=3600,
        description="How long a stopping gateway pod (a roll, a node drain, a scale-down) may "
        "take to finish the answers it is streaming, after 5 s in which it still serves but "
        "fails its readiness, leaving its Service; longer than the longest answer. The pod's "
        "termination grace period follows.",
    )


class SourceSpec(Spec):
    """Documents to ingest: a ConfigMap or a PersistentVolumeClaim."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "has(self.configMap) != has(self.persistentVolumeClaim)",
                "set exactly one of configMap and persistentVolumeClaim",
            )
        )
    )

    config_map: LocalRef | None = Field(
        None, description="A ConfigMap whose keys are documents (the key is the file name)."
    )
    persistent_volume_claim: LocalRef | None = Field(
        None, description="A claim holding documents, read recursively."
    )


# bge-small-en-v1.5 (384 dimensions, 36 MB at Q8_0) as a GGUF for llama.cpp.
DEFAULT_EMBEDDING_SOURCE = "hf://ChristianAzinn/bge-small-en-v1.5-gguf/bge-small-en-v1.5.Q8_0.gguf"


class EmbeddingSpec(Spec):
    """The embedding model, served through an OpenAI-compatible /v1/embeddings."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "!has(self.requireApiKey) || !self.requireApiKey || !has(self.endpoint)",
                "requireApiKey is for the embeddings server the operator runs, not an endpoint",
                ".requireApiKey",
            )
        )
    )

    model: str = Field("BAAI/bge-small-en-v1.5", min_length=1, description="Embedding model id.")
    source: str = Field(
        DEFAULT_EMBEDDING_SOURCE,
        pattern=rf"^(hf://{_SEGMENT}/{_SEGMENT}(/{_SEGMENT})+|https?://[^/]+/.+|"
        rf"pvc://{_CLAIM}(/{_SEGMENT})+)$",
        description="The GGUF the operator's embeddings server (llama.cpp on CPU) loads, as "
        "model.source: hf://OWNER/REPO/FILE.gguf or https://HOST/FILE.gguf, fetched into its "
        "cache, or pvc://CLAIM/PATH/FILE.gguf, read from a claim (an air-gapped cluster). "
        "Unused with endpoint.",
    )
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://",
        description="An existing OpenAI-compatible embeddings API, ending in /v1; when unset "
        "the operator runs an embeddings server with `source`.",
    )
    image: str | None = Field(
        None,
        description="The embeddings server's image (llama.cpp); the pinned default when unset.",
    )
    context_length: int | None = Field(
        None,
        ge=16,
        le=131072,
        description="The tokens one input may hold, as the model was trained (512 for the "
        "BERT family: bge-small, all-MiniLM): the embeddings server's context and batch. "
        "Unset: the GGUF's own length (llama.cpp's --ctx-size 0) in batches of 512 tokens. "
        "The gateway and the ingest split a longer text and embed it as its parts' mean.",
    )
    pooling: Literal["mean", "cls", "last"] | None = Field(
        None,
        description="How the embeddings server pools the model's token vectors into one "
        "(llama.cpp's --pooling), as the model card says. Unset: the model card's pooling "
        "for the models Tertulia knows (cls for BAAI/bge, mixedbread-ai/mxbai-embed and "
        "Snowflake/snowflake-arctic-embed; mean for sentence-transformers' all-MiniLM and "
        "all-mpnet, nomic-ai/nomic-embed-text and intfloat/e5), else the GGUF's own.",
    )
    resources: KubernetesObject | None = Field(None, description=RESOURCES_DESCRIPTION)
    require_api_key: bool = Field(
        False,
        description="The embeddings server refuses any request without a key the operator "
        "generates (Secret NAME-server-keys, key `embeddings`) and gives the gateway and the "
        "ingest Job alone; its /metrics then asks the key too and is not scraped.",
    )


class S3BackupSpec(Spec):
    """An S3-compatible bucket that Weaviate's backup-s3 module writes backups to: AWS S3,
    MinIO, Ceph, Cloudflare R2, Google Cloud Storage's interoperability API."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "has(self.accessKeyIdSecretRef) == has(self.secretAccessKeySecretRef)",
                "accessKeyIdSecretRef and secretAccessKeySecretRef are set together",
                ".secretAccessKeySecretRef",
            )
        )
    )

    bucket: str = Field(
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$",
        description="The bucket.",
    )
    path: str | None = Field(
        None,
        max_length=1024,
        pattern=r"^[^\s]+$",
        description="A folder inside the bucket for this ChatBot's backups; the bucket's root "
        "when unset.",
    )
    endpoint: str | None = Field(
        None,
        max_length=253,
        pattern=r"^[A-Za-z0-9.-]+(:[0-9]+)?$",
        description="HOST[:PORT] of an S3-compatible service; AWS S3 (s3.amazonaws.com) when "
        "unset.",
    )
    region: str | None = Field(None, max_length=64, description="The bucket's region.")
    insecure: bool = Field(
        False, description="Plain HTTP to the endpoint, for a store inside a network you trust."
    )
    access_key_id_secret_ref: SecretKeyRef | None = Field(
        None,
        description="The Secret key holding the access key id; with neither key set, Weaviate "
        "uses the pod's own identity (an IAM role for its service account).",
    )
    secret_access_key_secret_ref: SecretKeyRef | None = Field(
        None, description="The Secret key holding the secret access key."
    )


class KnowledgeBackupSpec(Spec):
    """Scheduled backups of the knowledge base, written by Weaviate's own backup modules: to a
    volume of their own, or to an S3-compatible bucket."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule("isQuantity(self.storage)", "storage must be a quantity, such as 10Gi", ".storage")
        )
    )

    schedule: str = Field(
        "0 3 * * *",
        min_length=9,
        max_length=100,
        description="When to back up, as a CronJob schedule (the cluster's time zone, UTC by "
        "default): every day at 03:00 unless set.",
    )
    storage: str = Field("10Gi", description="The backup volume's size (without s3).")
    storage_class_name: str | None = Field(
        None, description="StorageClass of the backup volume; the cluster's default when unset."
    )
    s3: S3BackupSpec | None = Field(
        None,
        description="Write backups to this bucket instead of a volume: they outlive the "
        "cluster, and a knowledge base of several nodes can be backed up.",
    )


class ExternalWeaviateSpec(Spec):
    """A Weaviate the operator does not run: Weaviate Cloud, or one of your own elsewhere."""

    url: str = Field(
        pattern=r"^https?://[^/\s]+$",
        max_length=2048,
        description="Its HTTP address, https://HOST[:PORT] (http only inside a network you "
        "trust). The API key comes from apiKeySecretRef.",
    )
    grpc_url: str | None = Field(
        None,
        pattern=r"^https?://[^/\s]+$",
        max_length=2048,
        description="Its gRPC address, https://HOST[:PORT] for TLS: Weaviate Cloud's is "
        "https://grpc-HOST. Unset: the HTTP host, port 50051, TLS as the HTTP address.",
    )
    api_key_secret_ref: SecretKeyRef = Field(description="The Secret key holding its API key.")


class KnowledgeBaseSpec(Spec):
    """A Weaviate knowledge base the gateway retrieves from."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "isQuantity(self.storage)", "storage must be a quantity, such as 10Gi", ".storage"
            ),
            # Weaviate's claim comes from its StatefulSet's claim template, which cannot change.
            rule(
                "!oldSelf.enabled || !self.enabled || self.storage == oldSelf.storage",
                "storage cannot change once the knowledge base exists: expand its claim "
                "(data-NAME-knowledge-base-0) where its class allows",
                ".storage",
            ),
            rule(
                "!oldSelf.enabled || !self.enabled || "
                "(has(self.storageClassName) == has(oldSelf.storageClassName) && "
                "(!has(self.storageClassName) || "
                "self.storageClassName == oldSelf.storageClassName))",
                "storageClassName cannot change once the knowledge base exists",
                ".storageClassName",
            ),
            # Weaviate's nodes agree on their members when they first start, and each
            # collection's replication factor is set when it is made.
            rule(
                "!oldSelf.enabled || !self.enabled || self.replicas == oldSelf.replicas",
                "replicas cannot change once the knowledge base exists: back it up, delete "
                "it and ingest again (docs/knowledge.md)",
                ".replicas",
            ),
            rule(
                "self.replicas == 1 || !has(self.backup) || has(self.backup.s3)",
                "backup to a volume is of one node: with several replicas, back up to s3",
                ".backup",
            ),
            rule(
                "!has(self.external) || !has(self.backup)",
                "backup is for the in-cluster Weaviate: back an external one up where it runs",
                ".backup",
            ),
            rule(
                "!has(self.external) || self.replicas == 1",
                "replicas is for the in-cluster Weaviate, not an external one",
                ".replicas",
            ),
        )
    )

    enabled: bool = Field(False, description="Deploy Weaviate and retrieve from it.")
    replicas: int = Field(
        1,
        ge=1,
        le=9,
        description="Weaviate nodes, each with a volume of `storage` and a copy of every "
        "chunk, on different nodes where the cluster has them: with 2 or more, searches go on "
        "while one is away (a drain, a crash). Set when the knowledge base is made.",
    )
    external: ExternalWeaviateSpec | None = Field(
        None,
        description="Use this Weaviate instead of running one: the operator then renders no "
        "Weaviate, volume or key of its own.",
    )
    storage: str = Field("10Gi", description="Weaviate's volume size (per node).")
    storage_class_name: str | None = Field(None, description="StorageClass of Weaviate's volume.")
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec, description="Embedding model.")
    sources: list[SourceSpec] = Field(
        default_factory=list, max_length=32, description="What to ingest."
    )
    top_k: int = Field(4, ge=1, le=50, description="Passages retrieved per message.")
    alpha: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Hybrid search weight: 0 is keyword (BM25) search only, 1 vectors only.",
    )
    backup: KnowledgeBackupSpec | None = Field(
        None,
        description="Back the knowledge base up on a schedule, to a volume apart from "
        "Weaviate's; restore with `tertulia kb restore` (docs/knowledge.md). Removing it "
        "deletes the backup volume.",
    )
    image: str | None = Field(None, description="Weaviate's image; the pinned default when unset.")
    resources: KubernetesObject | None = Field(
        None,
        description=RESOURCES_DESCRIPTION + " Weaviate keeps its vector index in memory: give "
        "a large knowledge base gigabytes.",
    )


class SlackSpec(Spec):
    """A Slack app: Socket Mode (app token) or the HTTP Events API (signing secret)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "self.mode != 'socket' || has(self.appTokenSecretRef)",
                "appTokenSecretRef is required in socket mode",
                ".appTokenSecretRef",
            ),
            rule(
                "self.mode != 'events' || has(self.signingSecretRef)",
                "signingSecretRef is required in events mode",
                ".signingSecretRef",
            ),
        )
    )

    mode: Literal["socket", "events"] = Field("socket", description="How Slack reaches the bot.")
    bot_token_secret_ref: SecretKeyRef = Field(description="The bot token (xoxb-...).")
    app_token_secret_ref: SecretKeyRef | None = Field(
        None, description="The app-level token (xapp-...)."
    )
    signing_secret_ref: SecretKeyRef | None = Field(
        None, description="The signing secret (events mode)."
    )
    api_url: str | None = Field(
        None,
        pattern=r"^https?://.+/$",
        description="Slack's Web API base URL, ending in a slash: https://slack-gov.com/api/ for "
        "GovSlack; https://slack.com/api/ when unset.",
    )
    resources: KubernetesObject | None = Field(None, description=RESOURCES_DESCRIPTION)


class DiscordSpec(Spec):
    """A Discord bot: mentions, direct messages and the /ask and /reset commands, with no
    privileged intent to switch on in the developer portal."""

    token_secret_ref: SecretKeyRef = Field(description="The bot token.")
    resources: KubernetesObject | None = Field(None, description=RESOURCES_DESCRIPTION)


class TelegramSpec(Spec):
    """A Telegram bot: long polling, or a webhook Telegram calls."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "self.mode != 'webhook' || has(self.webhookUrl)",
                "webhookUrl is required when mode is webhook",
                ".webhookUrl",
            )
        )
    )

    mode: Literal["polling", "webhook"] = Field("polling", description="How updates arrive.")
    token_secret_ref: SecretKeyRef = Field(description="The bot token from @BotFather.")
    webhook_url: str | None = Field(
        None, pattern=r"^https://", description="Public HTTPS URL Telegram posts updates to."
    )
    webhook_secret_ref: SecretKeyRef | None = Field(
        None, description="The secret Telegram sends with each webhook call."
    )
    api_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="A self-hosted Bot API server (telegram-bot-api), such as "
        "http://telegram-bot-api:8081; https://api.telegram.org when unset.",
    )
    resources: KubernetesObject | None = Field(None, description=RESOURCES_DESCRIPTION)


class PlatformsSpec(Spec):
    """The chat platforms to serve; one bot Deployment each."""

    slack: SlackSpec | None = Field(None, description="Slack.")
    discord: DiscordSpec | None = Field(None, description="Discord.")
    telegram: TelegramSpec | None = Field(None, description="Telegram.")

    def configured(self) -> dict[str, SlackSpec | DiscordSpec | TelegramSpec]:
        found = {"slack": self.slack, "discord": self.discord, "telegram": self.telegram}
        return {name: spec for name, spec in found.items() if spec is not None}


class ChatBotSpec(Spec):
    """A private LLM chatbot: its model server, gateway, knowledge base and platforms."""

    model: ModelSpec = Field(description="The model server.")
    gateway: GatewaySpec = Field(
        default_factory=GatewaySpec,
        description="The chat gateway.",
        json_schema_extra={"default": {}},
    )
    knowledge_base: KnowledgeBaseSpec = Field(
        default_factory=KnowledgeBaseSpec, description="The knowledge base."
    )
    platforms: PlatformsSpec = Field(default_factory=PlatformsSpec, description="Chat platforms.")
    image_pull_secrets: list[SecretRef] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets with registry credentials, for every Pod of the ChatBot (a "
        "private mirror).",
    )
    priority_class_name: str | None = Field(
        None, description="PriorityClass of every Pod of the ChatBot."
    )
    retain_data_on_delete: bool = Field(
        False,
        description="Whether Redis's and Weaviate's claims (the conversations, the knowledge "
        "base) outlive the ChatBot. false: deleting the ChatBot deletes them with it. true: "
        "they are kept, and a ChatBot created again with the same name in the same namespace "
        "takes them back (their StatefulSets' persistentVolumeClaimRetentionPolicy).",
    )


Phase = Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"]
CONDITION_TYPES = (
    "ModelReady",
    "GatewayReady",
    "KnowledgeBaseReady",
    "MemoryReady",
    "PlatformsReady",
    "Ready",
)


class Condition(Spec):
    """A condition in Kubernetes' shape; lastTransitionTime moves only when status flips."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    type: str = Field(
        description="ModelReady, GatewayReady, KnowledgeBaseReady, MemoryReady, "
        "PlatformsReady or Ready."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str = Field(description="A CamelCase word for why.")
    message: str = Field(description="What a person should know, and do.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int = Field(0, description="The spec generation this was computed from.")


class ModelStatus(Spec):
    """The model server's replicas, for `kubectl scale` and the READY column."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    name: str = Field("", description="The model id the gateway requests.")
    replicas: int = Field(0, description="Model server replicas that exist.")
    ready_replicas: int = Field(0, description="Model server replicas that are Ready.")
    selector: str = Field("", description="Label selector of the model server's Pods.")


class AutoscalingStatus(Spec):
    """What the autoscaler (the leading gateway replica) last decided, and why; written by
    the gateway, not the operator."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    desired_replicas: int = Field(0, description="The replicas it asked for.")
    reason: str = Field("", description="Why the model has that many replicas.")
    last_scale_time: str | None = Field(
        None, description="When it last changed the replicas (RFC 3339)."
    )


class EndpointsStatus(Spec):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    gateway: str = Field("", description="In-cluster URL of the gateway.")


class ChatBotStatus(Spec):
    """What the operator observed of the ChatBot's stack."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    phase: Phase = Field("Pending", description="Pending, Progressing, Ready, Degraded or Failed.")
    observed_generation: int = Field(0, description="The spec generation last reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Per-component conditions."
    )
    model: ModelStatus = Field(default_factory=ModelStatus, description="The model server.")
    endpoints: EndpointsStatus = Field(
        default_factory=EndpointsStatus, description="Where to reach it."
    )
    platforms: str = Field("", description="The configured platforms, comma-separated.")


class ChatBot(BaseModel):
    """A ChatBot as the operator handles it: identity from metadata, the parsed spec."""

    model_config = ConfigDict(frozen=True)

    name: str
    namespace: str
    uid: str
    generation: int = 0
    spec: ChatBotSpec

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ChatBot:
        metadata = body["metadata"]
        return cls(
            name=metadata["name"],
            namespace=metadata["namespace"],
            uid=metadata["uid"],
            generation=metadata.get("generation", 0),
            spec=ChatBotSpec.model_validate(body.get("spec") or {}),
        )

    def child(self, component: str) -> str:
        """The name of one of its objects: NAME-component."""
        return f"{self.name}-{component}"
