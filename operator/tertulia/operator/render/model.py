"""The model server, one shape per engine: vLLM on GPUs, Ollama, llama.cpp; none for endpoint."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from tertulia.common.weights import ModelSource, cache_path, parse
from tertulia.operator.api import ChatBot, ModelAutoscalingSpec, ModelSpec
from tertulia.operator.render import images
from tertulia.operator.render.common import (
    Manifest,
    claim_spec,
    cpu_threads,
    deployment,
    disruption_budget,
    headless_service,
    http_probe,
    labels,
    memory_mib,
    metadata,
    pod_spec,
    restricted_container_security,
    selector_labels,
    service,
)

COMPONENT = "model"

PORTS = {"vllm": 8000, "ollama": 11434, "llamacpp": 8080}
# The startup probe's period; spec.model.startupTimeoutSeconds bounds its attempts. Short, as
# KubeAI's: a replica is Ready within 2 s of loading its model (the readiness probe runs at
# once when the startup probe succeeds), which a request held at zero replicas waits for.
STARTUP_PERIOD = 2
DEFAULT_LLAMACPP_CONTEXT = 8192


def model_base_url(bot: ChatBot) -> str:
    """The OpenAI-compatible base URL the gateway calls."""
    model = bot.spec.model
    if model.engine == "endpoint":
        assert model.endpoint is not None  # noqa: S101 - the CRD requires it
        return model.endpoint.rstrip("/")
    return f"http://{bot.child(COMPONENT)}.{bot.namespace}.svc:{PORTS[model.engine]}/v1"


BACKEND_KEY_PATH = "/etc/tertulia/backend"
# The keys the operator makes for the servers it runs (spec.model.requireApiKey,
# knowledgeBase.embedding.requireApiKey): one Secret, a key per server.
SERVER_KEYS = ("model", "embeddings")
SERVER_KEY_PATH = "/etc/tertulia/server-key"


def server_keys_secret(bot: ChatBot) -> str:
    return bot.child("server-keys")


def needs_server_keys(bot: ChatBot) -> bool:
    knowledge = bot.spec.knowledge_base
    return bot.spec.model.require_api_key or (
        knowledge.enabled and knowledge.embedding.require_api_key
    )


def generated_server_keys(bot: ChatBot, keys: dict[str, str]) -> Manifest:
    """The keys the model and embeddings servers ask of every request, made once."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(bot, COMPONENT, server_keys_secret(bot), watched=True),
        "type": "Opaque",
        "stringData": keys,
    }


def server_key_volume(bot: ChatBot, server: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A server's generated key as a volume, its mount, and the file to read."""
    volume = {
        "name": f"{server}-key",
        "secret": {
            "secretName": server_keys_secret(bot),
            "items": [{"key": server, "path": server}],
        },
    }
    mount = {"name": f"{server}-key", "mountPath": f"{SERVER_KEY_PATH}-{server}", "readOnly": True}
    return volume, mount, f"{SERVER_KEY_PATH}-{server}/{server}"


def backend_key_volume(bot: ChatBot) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """The key the gateway sends the model server, as a volume, its mount, and the file to
    read: the endpoint's, or the one the operator made for its own server."""
    if bot.spec.model.require_api_key:
        return server_key_volume(bot, "model")
    ref = bot.spec.model.api_key_secret_ref
    if ref is None:
        return None
    volume = {
        "name": "backend-key",
        "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": ref.key}]},
    }
    mount = {"name": "backend-key", "mountPath": BACKEND_KEY_PATH, "readOnly": True}
    return volume, mount, f"{BACKEND_KEY_PATH}/{ref.key}"


def served_model_name(model: ModelSpec) -> str:
    """The model id the gateway sends upstream ('' lets the gateway ask the server): the
    name, else the source's file without its extension, or its repository. Ollama serves a
    model under its library tag only, so an ollama:// source names it."""
    if model.source is None:
        return model.name or ""
    source = parse(model.source)
    if source.scheme == "ollama":
        return source.location
    if model.name:
        return model.name
    if source.scheme == "hf" and not source.path:
        return source.location
    return PurePosixPath(source.filename).stem


# Where a pod's downloaded weights, or a claim holding them, are mounted.
CACHE_PATH = "/models"
CLAIM_PATH = "/weights"
# The image's user (services/Dockerfile): a new volume becomes its group's to write.
FETCH_USER = 10001
# Every model server runs under the restricted Pod Security profile: not root, no
# capabilities, a read-only root filesystem, its home, /tmp and caches on volumes. The user
# per engine, as (uid, gid). vLLM's image ships a `vllm` user, UID 2000 in group 0, whose
# home is group-0 writable (vllm-project/vllm docker/Dockerfile, "Non-root support";
# docker/entrypoints/vllm-nonroot-entrypoint.sh). The llama.cpp server image
# (.devops/cpu.Dockerfile) and Ollama's (Dockerfile) define no user and need none of root's
# rights: they run as the weights fetcher's user, which the volumes are made writable for.
ENGINE_USERS = {
    "vllm": (2000, 0),
    "ollama": (FETCH_USER, FETCH_USER),
    "llamacpp": (FETCH_USER, FETCH_USER),
}
# Each engine's home (its caches default below it), on a volume of its own.
ENGINE_HOMES = {"vllm": "/home/vllm", "ollama": "/home/ollama", "llamacpp": "/home/llama"}
# Size limits of the scratch volumes; the cache's, without a claim, is the claim's default.
HOME_LIMIT = "1Gi"
TMP_LIMIT = {"vllm": "8Gi", "ollama": "2Gi", "llamacpp": "1Gi"}
CACHE_LIMIT = "50Gi"
# Settings in spec.model.env that say how to reach the hub, for every download of the ChatBot
# (the embeddings server's too).
HUB_SETTINGS = ("HF_ENDPOINT", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")


def hub_env(model: ModelSpec) -> list[dict[str, Any]]:
    return [item for item in model.env if item.get("name") in HUB_SETTINGS]


def fetch_weights(
    source: ModelSource,
    image: str,
    env: list[dict[str, Any]],
    *,
    max_size: str,
    sha256: str | None = None,
) -> dict[str, Any]:
    """The init container that downloads `source` into the cache volume once
    (`tertulia model fetch`), no larger than the volume (`max_size`), checking `sha256`
    when given, at every start; `env` carries HF_TOKEN and HF_ENDPOINT when set."""
    checks = ["--max-size", max_size, *(["--sha256", sha256] if sha256 else [])]
    return {
        "name": "fetch-weights",
        "image": image,
        "args": ["model", "fetch", source.url, "--cache", CACHE_PATH, *checks],
        # No empty list (see tests/unit/operator/test_render.py: the API server drops it).
        **({"env": env} if env else {}),
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": restricted_container_security(),
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_PATH}],
    }


def weights_file(source: ModelSource) -> str:
    """The path a model server loads `source` from inside its pod: a claim's file or folder,
    or the file downloaded into the cache."""
    if source.scheme == "pvc":
        return f"{CLAIM_PATH}/{source.path}"
    return f"{CACHE_PATH}/{cache_path(source)}"


def claim_volume(source: ModelSource) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pvc:// source's claim, read-only, and its mount."""
    return (
        {
            "name": "weights",
            "persistentVolumeClaim": {"claimName": source.location, "readOnly": True},
        },
        {"name": "weights", "mountPath": CLAIM_PATH, "readOnly": True},
    )


def replicas_service(bot: ChatBot) -> str:
    """The headless Service whose DNS name lists the model server's ready pods: the gateway
    routes each conversation to one of them."""
    return bot.child(f"{COMPONENT}-replicas")


def replicas_address(bot: ChatBot) -> str | None:
    """The DNS name the gateway looks the ready replicas up by; none for an endpoint."""
    if bot.spec.model.engine == "endpoint":
        return None
    return f"{replicas_service(bot)}.{bot.namespace}.svc"


# llama-server's slots when --parallel is left to its default, -1 ("auto": 4 slots and a
# unified KV cache; tools/server/server.cpp).
LLAMACPP_DEFAULT_SLOTS = 4


def replica_capacity(model: ModelSpec) -> int:
    """Requests one replica serves at once without slowing, the floor of the gateway's bound
    on a replica's requests in flight: the autoscaler's target when the model autoscales
    (what the team says a replica carries); else the engine's own limit when the spec's args
    set it (llama.cpp's `--parallel`, vLLM's `--max-num-seqs`) or llama.cpp's default slots;
    else the autoscaler's default target (Ollama is given as many slots, vLLM's default of
    hundreds of sequences would slow each one)."""
    if model.autoscaling is not None:
        return model.autoscaling.target_in_flight
    flags = {"llamacpp": ("-np", "--parallel"), "vllm": ("--max-num-seqs",)}
    given = _spec_value(model, *flags.get(model.engine, ()))
    if given is not None and given.isdigit() and int(given) > 0:
        return int(given)
    if model.engine == "llamacpp":
        return LLAMACPP_DEFAULT_SLOTS
    return OLLAMA_DEFAULT_PARALLEL


def model_selector(bot: ChatBot) -> str:
    """The label selector of the model server's Pods, for the scale subresource."""
    return ",".join(f"{key}={value}" for key, value in selector_labels(bot, COMPONENT).items())


def render_model_server(bot: ChatBot, *, image: str, registry: str = "") -> list[Manifest]:
    """The model server; `image` (Tertulia's) runs the init container that fetches weights,
    `registry` mirrors the engine's default image.

    Its weights cache decides the workload: without one, a Deployment over an emptyDir; with a
    ReadWriteMany cache, a Deployment whose replicas share one claim (a download lock keeps
    them from writing one file at once); with a ReadWriteOnce cache, a StatefulSet whose
    claim templates give each replica its own claim, so replicas start on any node."""
    model = bot.spec.model
    if model.engine == "endpoint":
        return []
    port = PORTS[model.engine]
    container, volumes = _ENGINES[model.engine](bot, model, port)
    if container["image"] is None:
        container["image"] = images.mirrored(_default_image(model), registry)
    container.setdefault("ports", [{"name": "http", "containerPort": port}])
    home = ENGINE_HOMES[model.engine]
    container["env"] = [{"name": "HOME", "value": home}, *container.get("env", []), *model.env]
    container["resources"] = _resources(model)
    container["securityContext"] = restricted_container_security()
    # A deleted pod leaves its Services at once and the headless Service's DNS within its TTL
    # (5 s in CoreDNS) plus a gateway's lookup; requests routed to it meanwhile are answered,
    # and so is every answer it is streaming, before the engine stops (see _stop).
    container["lifecycle"] = {"preStop": _stop(bot, container)}
    cache_mount = container.pop("cache_path")
    container["volumeMounts"] = [
        *container.get("volumeMounts", []),
        {"name": "cache", "mountPath": cache_mount},
        {"name": "home", "mountPath": home},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir of its own
    ]
    volumes += [
        {"name": "home", "emptyDir": {"sizeLimit": HOME_LIMIT}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_LIMIT[model.engine]}},
    ]
    per_replica = model.cache is not None and model.cache.access_mode == "ReadWriteOnce"
    if not per_replica:
        volumes.append(_cache_volume(bot))
    user, group = ENGINE_USERS[model.engine]
    extra: dict[str, Any] = {
        # A new volume is made the user's group's to write, once.
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": user,
            "runAsGroup": group,
            "fsGroup": user,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    }
    source = parse(model.source) if model.source else None
    if source is not None and source.scheme == "pvc":
        volume, mount = claim_volume(source)
        volumes.append(volume)
        container["volumeMounts"].append(mount)
    elif source is not None and source.downloads and model.engine == "llamacpp":
        env = [*_token_env(model, "HF_TOKEN"), *model.env]
        size = model.cache.size if model.cache is not None else CACHE_LIMIT
        extra["initContainers"] = [
            fetch_weights(source, image, env, max_size=size, sha256=model.sha256)
        ]
    if model.runtime_class_name:
        extra["runtimeClassName"] = model.runtime_class_name
    if model.priority_class_name:
        extra["priorityClassName"] = model.priority_class_name
    pod = pod_spec(
        bot,
        [container],
        volumes=volumes or None,
        nodeSelector=model.node_selector or None,
        tolerations=model.tolerations or None,
        affinity=model.affinity,
        terminationGracePeriodSeconds=STOP_DELAY_SECONDS + drain_seconds(bot) + STOP_MARGIN_SECONDS,
        **extra,
    )
    pod = {key: value for key, value in pod.items() if value is not None}
    # Ollama serves no Prometheus metrics; vLLM and llama.cpp (with --metrics) do, but
    # llama.cpp asks its key on /metrics too, which a scraper has not.
    scraped = model.engine == "vllm" or (model.engine == "llamacpp" and not model.require_api_key)
    manifests = [
        service(bot, COMPONENT, port, metrics="http" if scraped else None),
        headless_service(
            bot,
            COMPONENT,
            replicas_service(bot),
            [{"name": "http", "port": port, "targetPort": port}],
            not_ready=False,
        ),
    ]
    if per_replica:
        manifests.insert(0, _stateful_set(bot, pod))
    else:
        manifests.insert(0, deployment(bot, COMPONENT, model.replicas, pod))
    if model.replicas > 1:
        manifests.append(disruption_budget(bot, COMPONENT))
    if model.cache is not None and not per_replica:
        manifests.insert(
            0,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": metadata(bot, COMPONENT, bot.child("model-cache")),
                "spec": _claim_spec(model),
            },
        )
    return manifests


def _claim_spec(model: ModelSpec) -> dict[str, Any]:
    assert model.cache is not None  # noqa: S101 - callers check
    cache = model.cache
    return claim_spec(cache.size, cache.storage_class_name, cache.access_mode)


def _stateful_set(bot: ChatBot, pod: dict[str, Any]) -> Manifest:
    """Replicas with a cache claim each: started and stopped all at once (they share no
    state), the claims kept on scale-down (a replica scaled back up finds its weights) and
    deleted with the ChatBot."""
    model = bot.spec.model
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(bot, COMPONENT),
        "spec": {
            "serviceName": bot.child(COMPONENT),
            "replicas": model.replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(bot, COMPONENT)},
            "template": {"metadata": {"labels": labels(bot, COMPONENT)}, "spec": pod},
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "cache", "labels": labels(bot, COMPONENT)},
                    "spec": _claim_spec(model),
                }
            ],
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Delete",
                "whenScaled": "Retain",
            },
        },
    }


def _default_image(model: ModelSpec) -> str:
    if model.engine == "vllm":
        return images.VLLM
    if model.engine == "ollama":
        return images.OLLAMA
    # The CPU build reserves no GPU it could use: with GPUs, the CUDA build.
    return images.LLAMACPP_CUDA if model.gpu_count else images.LLAMACPP


def _probes(model: ModelSpec, path: str, port: int) -> dict[str, dict[str, Any]]:
    """Probes for a server that may be busy: a missed answer under load is not a reason to
    restart it (a restart reloads its weights), a long silence is. Loading may take up to
    the spec's startup allowance."""
    return {
        "startupProbe": http_probe(
            path,
            port,
            periodSeconds=STARTUP_PERIOD,
            timeoutSeconds=5,
            failureThreshold=_startup_failures(model),
        ),
        "readinessProbe": http_probe(
            path, port, periodSeconds=10, timeoutSeconds=5, failureThreshold=3
        ),
        "livenessProbe": http_probe(
            path, port, periodSeconds=30, timeoutSeconds=10, failureThreshold=5
        ),
    }


def _startup_failures(model: ModelSpec) -> int:
    return -(-model.startup_timeout_seconds // STARTUP_PERIOD)


# Seconds a deleted model pod keeps serving before it drains (see _stop): longer than a
# cluster DNS keeps listing it. Then its answers in flight may take the time the slowest
# engine needs for the longest answer (gateway.maxTokens): tokens a second, at the least, as
# a busy replica streams them (llm-d's guides measure 47 ms a token for a 32B model on H100s,
# about 20 a second; a CPU model gives a few). The kubelet's grace period adds a margin for
# the engine to exit.
STOP_DELAY_SECONDS = 15
SLOWEST_TOKENS_PER_SECOND = {"vllm": 20, "llamacpp": 5, "ollama": 5}
MIN_DRAIN_SECONDS = 30
MAX_DRAIN_SECONDS = 3600
STOP_MARGIN_SECONDS = 15


def drain_seconds(bot: ChatBot) -> int:
    """How long a stopping model pod may take to finish the answers it is streaming: the
    longest answer at the engine's slowest rate, or the --shutdown-timeout the spec's own
    args give vLLM (the grace period then waits for it)."""
    model = bot.spec.model
    given = _spec_value(model, "--shutdown-timeout") if model.engine == "vllm" else None
    if given is not None and given.isdigit():
        return min(int(given), MAX_DRAIN_SECONDS)
    rate = SLOWEST_TOKENS_PER_SECOND.get(model.engine, 5)
    needed = -(-bot.spec.gateway.max_tokens // rate)
    return min(max(needed, MIN_DRAIN_SECONDS), MAX_DRAIN_SECONDS)


# The drain both preStops share: serve on for the delay, then wait, a second at a time up to
# the drain, until the engine's `busy` (defined before it, printing a count) says 0.
_DRAIN = """sleep "$STOP_DELAY"
waited=0
while [ "$waited" -lt "$DRAIN_SECONDS" ]; do
  [ "$(busy)" = 0 ] && exit 0
  waited=$((waited + 1))
  sleep 1
done
"""

# llama.cpp stops its streams at once on SIGTERM, so its preStop waits until it has none: its
# Prometheus gauges of requests processing and deferred (it runs with --metrics) both at 0,
# read with the curl its image carries (.devops/cpu.Dockerfile and cuda.Dockerfile install it
# for their HEALTHCHECK). With the generated key, /metrics asks for it too. A server that no
# longer answers counts as idle.
_LLAMACPP_BUSY = """key=""
[ -n "${KEY_FILE:-}" ] && key="$(cat "$KEY_FILE")"
busy() {
  curl -sf -m 5 -H "Authorization: Bearer $key" "http://127.0.0.1:$PORT/metrics" \
    | awk '/^llamacpp:requests_(processing|deferred) / { n += $2 } END { print n + 0 }'
}
"""

# Ollama closes its HTTP server at once on SIGTERM (server/routes.go: `srvr.Close()`), and
# neither its API nor its logs say what it is serving (`/api/ps` lists the loaded models), so
# its preStop waits until no client holds a connection to its port: the pod's own ESTABLISHED
# TCP sockets in /proc/net/tcp and tcp6 (state 01), read with the dash and mawk of its
# ubuntu:24.04 base. A gateway's idle pooled connection closes within its keep-alive (4 s).
_OLLAMA_BUSY = """port="$(printf '%04X' "$PORT")"
busy() {
  cat "$PROC_NET/tcp" "$PROC_NET/tcp6" 2>/dev/null \
    | awk -v port=":$port" 'substr($2, length($2) - 4) == port && $4 == "01" { n++ }
      END { print n + 0 }'
}
"""


def _stop(bot: ChatBot, container: dict[str, Any]) -> dict[str, Any]:
    """The engine's preStop: serve on while the DNS forgets the pod, then let the answers in
    flight finish. vLLM drains by itself on SIGTERM (--shutdown-timeout, see _vllm); llama.cpp
    is waited for until its /metrics says it is idle, Ollama until no client is connected."""
    engine = bot.spec.model.engine
    if engine == "vllm":
        return {"sleep": {"seconds": STOP_DELAY_SECONDS}}
    settings: dict[str, object] = {
        "STOP_DELAY": STOP_DELAY_SECONDS,
        "DRAIN_SECONDS": drain_seconds(bot),
        "PORT": PORTS[engine],
    }
    if engine == "ollama":
        settings["PROC_NET"] = "/proc/net"
        busy = _OLLAMA_BUSY
    else:
        args = container["args"]
        keys = [args[i + 1] for i in range(len(args) - 1) if args[i] == "--api-key-file"]
        settings["KEY_FILE"] = keys[-1] if keys else ""
        busy = _LLAMACPP_BUSY
    script = "".join(f"{name}={value}\n" for name, value in settings.items())
    return {"exec": {"command": ["sh", "-c", script + busy + _DRAIN]}}


# llama.cpp's host-memory prompt cache (--cache-ram, ggml-org/llama.cpp#16391) takes up to
# 8 GiB by default, whatever the container asked for: a quarter of the container's memory
# (its limit, else its request) leaves the rest to the weights, the KV cache and the compute
# buffers, and never more than llama.cpp's own default.
PROMPT_CACHE_SHARE = 4
PROMPT_CACHE_MAX_MIB = 8192


def _prompt_cache(model: ModelSpec) -> list[str]:
    """llama.cpp's --cache-ram from the container's memory, unless the spec's args set it."""
    if _spec_sets(model, "-cram", "--cache-ram"):
        return []
    memory = memory_mib(_resources(model))
    if memory is None:
        return []
    return ["--cache-ram", str(min(PROMPT_CACHE_MAX_MIB, memory // PROMPT_CACHE_SHARE))]


def _threads(model: ModelSpec) -> list[str]:
    """llama.cpp's --threads from the cores the container may use, unless the spec's args
    set them."""
    if _spec_sets(model, "-t", "--threads"):
        return []
    return ["--threads", str(cpu_threads(_resources(model)))]


def _spec_sets(model: ModelSpec, short: str, long: str) -> bool:
    """Whether the spec's own args give the engine the flag (`-t 4`, `--threads 4`,
    `--threads=4`): the operator's value then stays out."""
    return any(arg in (short, long) or arg.startswith(f"{long}=") for arg in model.args)


def _spec_value(model: ModelSpec, *flags: str) -> str | None:
    """The value the spec's own args give a flag by any of its `flags` (`-f 4`, `--flag 4`,
    `--flag=4`; the last one counts, as in argparse), or None."""
    value = None
    for index, arg in enumerate(model.args):
        if arg in flags and index + 1 < len(model.args):
            value = model.args[index + 1]
        elif any(flag.startswith("--") and arg.startswith(f"{flag}=") for flag in flags):
            value = arg.split("=", 1)[1]
    return value


def _resources(model: ModelSpec) -> dict[str, Any]:
    resources: dict[str, Any] = {
        key: dict(value)
        for key, value in (model.resources or {}).items()
        if isinstance(value, dict)
    }
    if model.gpu_count:
        for section in ("requests", "limits"):
            resources.setdefault(section, {})[model.gpu_resource_name] = str(model.gpu_count)
    resources.setdefault("requests", {}).setdefault("cpu", "1")
    resources["requests"].setdefault("memory", "4Gi")
    return resources


def _cache_volume(bot: ChatBot) -> dict[str, Any]:
    if bot.spec.model.cache is None:
        return {"name": "cache", "emptyDir": {"sizeLimit": CACHE_LIMIT}}
    return {"name": "cache", "persistentVolumeClaim": {"claimName": bot.child("model-cache")}}


def _token_env(model: ModelSpec, variable: str) -> list[dict[str, Any]]:
    if model.token_secret_ref is None:
        return []
    ref = model.token_secret_ref
    return [_secret_env(variable, ref.name, ref.key)]


def _secret_env(variable: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _vllm(bot: ChatBot, model: ModelSpec, port: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    name = served_model_name(model)
    weights = name
    if model.source is not None:
        source = parse(model.source)
        weights = weights_file(source) if source.scheme == "pvc" else source.location
    # `vllm serve` is set here, not left to the image's entrypoint, which has changed between
    # releases (python3 -m vllm.entrypoints.openai.api_server before `vllm serve`); as
    # vllm-project/production-stack's helm/templates/deployment-vllm-multi.yaml sets it. It
    # takes the model as its positional argument; its --model flag is deprecated there.
    args = [
        weights,
        "--served-model-name", name,
        "--port", str(port),
        "--tensor-parallel-size", str(model.gpu_count),
        *(["--max-model-len", str(model.max_model_len)] if model.max_model_len else []),
        *(
            ["--gpu-memory-utilization", str(model.gpu_memory_utilization)]
            if model.gpu_memory_utilization
            else []
        ),
        # On SIGTERM, refuse new requests and finish those in flight for up to this long (vLLM
        # 0.18 and later, PR #34730; its Kubernetes guide pairs it with a preStop sleep and a
        # grace period longer than both, as KServe's LLMInferenceService does).
        *(
            []
            if _spec_sets(model, "--shutdown-timeout", "--shutdown-timeout")
            else ["--shutdown-timeout", str(drain_seconds(bot))]
        ),
        *_vllm_tools(model),
        *model.args,
    ]  # fmt: skip
    container = {
        "name": "vllm",
        "image": model.image,
        "command": ["vllm", "serve"],
        "args": args,
        "env": [
            # Under a UID the image may not list in /etc/passwd, getpass.getuser() (torch's
            # caches) must not look it up: as vLLM's own non-root entrypoint sets it.
            {"name": "USER", "value": "vllm"},
            {"name": "LOGNAME", "value": "vllm"},
            {"name": "HF_HOME", "value": "/cache/huggingface"},
            # Compiled kernels and graphs: kept with the weights, so a restart skips them.
            {"name": "VLLM_CACHE_ROOT", "value": "/cache/vllm"},
            {"name": "TRITON_CACHE_DIR", "value": "/cache/triton"},
            *_token_env(model, "HF_TOKEN"),
            # `vllm serve --api-key` reads VLLM_API_KEY; it guards /v1 alone (/health and
            # /metrics stay open to the kubelet and the scrapers).
            *(
                [_secret_env("VLLM_API_KEY", server_keys_secret(bot), "model")]
                if model.require_api_key
                else []
            ),
        ],
        **_probes(model, "/health", port),
        # Tensor-parallel workers talk through shared memory.
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],  # noqa: S108 - a memory volume
        "cache_path": "/cache",
    }
    return container, [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]


def _vllm_tools(model: ModelSpec) -> list[str]:
    """vLLM's tool calling: without both flags it refuses `tool_choice: "auto"` (and the
    OpenAI SDK's default), and the parser reads the calls out of the model's words
    (docs/features/tool_calling.md)."""
    if not model.tools.enabled:
        return []
    flags = []
    if "--enable-auto-tool-choice" not in model.args:
        flags.append("--enable-auto-tool-choice")
    if _spec_value(model, "--tool-call-parser") is None and model.tools.parser:
        flags += ["--tool-call-parser", model.tools.parser]
    return flags


# Run in the container by the startup probe, with the model as $1 (never spliced into the
# script): pull only when the cache lacks the model, so a cached replica starts with the
# registry unreachable; then load it with one short generation, so the first user does not
# wait for the load. Until the server answers (it starts beside the probe) or while a pull
# fails (its error is the probe's output), it tries again every few seconds: one run of the
# probe lasts until the model is loaded, and the kubelet stops it at startupTimeoutSeconds
# (a failure, and with a failure threshold of one, a restart), so the allowance bounds the
# whole start. The server itself is the container's PID 1 and stops on SIGTERM.
OLLAMA_RETRY_SECONDS = 5
OLLAMA_PREPARE = (
    'until ollama show "$1" >/dev/null 2>&1 || ollama pull "$1" >/dev/null; '
    f"do sleep {OLLAMA_RETRY_SECONDS}; done; "
    'ollama run "$1" hi >/dev/null'
)
# Ollama serves one request at a time unless told (envconfig: OLLAMA_NUM_PARALLEL, default
# 1); the gateway sends a replica as many as the autoscaler's target in flight.
OLLAMA_DEFAULT_PARALLEL: int = ModelAutoscalingSpec.model_fields["target_in_flight"].default
# Tokens of a prompt beside the history, the passages and the answer: the system prompt's
# wrapping, the message itself, each passage's delimiters and title.
OLLAMA_MESSAGE_TOKENS = 512
# The largest chunk the ingest writes (the knowledge settings' chunk_tokens).
CHUNK_TOKENS = 200
OLLAMA_PASSAGE_OVERHEAD_TOKENS = 50


def ollama_context(bot: ChatBot) -> int:
    """The context a request to Ollama needs (its own default is 4096, or less: a longer prompt
    is cut from the front, silently): the history's budget, the passages, the system prompt,
    the message and the answer, rounded up to a multiple of 1024 tokens."""
    gateway = bot.spec.gateway
    knowledge = bot.spec.knowledge_base
    passages = (
        knowledge.top_k * (CHUNK_TOKENS + OLLAMA_PASSAGE_OVERHEAD_TOKENS)
        if knowledge.enabled
        else 0
    )
    # About four characters a token in English; three to stay on the safe side.
    system = len(gateway.system_prompt) // 3 + 1
    needed = (
        gateway.memory.max_tokens + passages + system + OLLAMA_MESSAGE_TOKENS + gateway.max_tokens
    )
    return -(-needed // 1024) * 1024


def _ollama(
    bot: ChatBot, model: ModelSpec, port: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    name = served_model_name(model)
    parallel = model.autoscaling.target_in_flight if model.autoscaling else OLLAMA_DEFAULT_PARALLEL
    settings = {
        "OLLAMA_HOST": f"0.0.0.0:{port}",
        "OLLAMA_MODELS": "/cache/models",
        # Keep the model loaded: by default Ollama unloads it after 5 idle minutes.
        "OLLAMA_KEEP_ALIVE": "-1",
        "OLLAMA_NUM_PARALLEL": str(parallel),
        "OLLAMA_CONTEXT_LENGTH": str(model.max_model_len or ollama_context(bot)),
    }
    # The spec's env sets its own (it follows these): a name twice would be refused.
    own = {item.get("name") for item in model.env}
    env = [{"name": key, "value": value} for key, value in settings.items() if key not in own]
    container = {
        "name": "ollama",
        "image": model.image,
        # The image's entrypoint is /bin/ollama.
        "args": ["serve"],
        "env": env,
        "startupProbe": {
            "exec": {"command": ["/bin/sh", "-c", OLLAMA_PREPARE, "prepare", name]},
            # One run, until the model is loaded or the allowance is spent.
            "timeoutSeconds": model.startup_timeout_seconds,
            "failureThreshold": 1,
        },
        "readinessProbe": http_probe(
            "/api/version", port, periodSeconds=10, timeoutSeconds=5, failureThreshold=3
        ),
        "livenessProbe": http_probe(
            "/api/version", port, periodSeconds=30, timeoutSeconds=10, failureThreshold=5
        ),
        "cache_path": "/cache",
    }
    return container, []


def _llamacpp(
    bot: ChatBot, model: ModelSpec, port: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    weights = (
        weights_file(parse(model.source))
        if model.source is not None
        else f"{CACHE_PATH}/{served_model_name(model)}"
    )
    args = [
        "--model", weights,
        "--alias", served_model_name(model),
        "--host", "0.0.0.0",  # noqa: S104 - inside its pod, behind its Service
        "--port", str(port),
        "--ctx-size", str(model.max_model_len or DEFAULT_LLAMACPP_CONTEXT),
        "--metrics",
        *(["--n-gpu-layers", "999"] if model.gpu_count else []),
        *_threads(model),
        *_prompt_cache(model),
        # Tool calling reads the model's own chat template, with its tool format, through
        # llama.cpp's Jinja engine (tools/server/README.md, "Function calling"); models without
        # one get its generic format. On by default in the pinned release (`--jinja,
        # --no-jinja ... (default: enabled)`), set here for an older image a user names; a
        # `--no-jinja` in args comes after it and wins.
        *(["--jinja"] if model.tools.enabled and "--jinja" not in model.args else []),
        *model.args,
    ]  # fmt: skip
    volumes: list[dict[str, Any]] = []
    container: dict[str, Any] = {
        "name": "llama-server",
        "image": model.image,
        "args": args,
        **_probes(model, "/health", port),  # /health asks no key
        "cache_path": CACHE_PATH,
    }
    if model.require_api_key:
        volume, mount, path = server_key_volume(bot, "model")
        volumes.append(volume)
        container["volumeMounts"] = [mount]
        args += ["--api-key-file", path]
    return container, volumes


_ENGINES = {"vllm": _vllm, "ollama": _ollama, "llamacpp": _llamacpp}
