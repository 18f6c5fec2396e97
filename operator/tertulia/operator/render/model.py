"""The model server, one shape per engine: vLLM on GPUs, Ollama, llama.cpp; none for endpoint."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from tertulia.common.weights import ModelSource, cache_path, parse
from tertulia.operator.api import ChatBot, ModelSpec
from tertulia.operator.render import images
from tertulia.operator.render.common import (
    Manifest,
    deployment,
    http_probe,
    metadata,
    pod_spec,
    restricted_container_security,
    selector_labels,
    service,
)

COMPONENT = "model"

PORTS = {"vllm": 8000, "ollama": 11434, "llamacpp": 8080}
# Weights can take long to download and load: the startup probe waits up to an hour.
_STARTUP = {"periodSeconds": 10, "failureThreshold": 360}


def model_base_url(bot: ChatBot) -> str:
    """The OpenAI-compatible base URL the gateway calls."""
    model = bot.spec.model
    if model.engine == "endpoint":
        assert model.endpoint is not None  # noqa: S101 - the CRD requires it
        return model.endpoint.rstrip("/")
    return f"http://{bot.child(COMPONENT)}.{bot.namespace}.svc:{PORTS[model.engine]}/v1"


BACKEND_KEY_PATH = "/etc/tertulia/backend"


def backend_key_volume(bot: ChatBot) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """The model server's API key Secret as a volume, its mount, and the file to read."""
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
# Settings in spec.model.env that say how to reach the hub, for every download of the ChatBot
# (the embeddings server's too).
HUB_SETTINGS = ("HF_ENDPOINT", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")


def hub_env(model: ModelSpec) -> list[dict[str, Any]]:
    return [item for item in model.env if item.get("name") in HUB_SETTINGS]


def fetch_weights(source: ModelSource, image: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    """The init container that downloads `source` into the cache volume once
    (`tertulia model fetch`); `env` carries HF_TOKEN and HF_ENDPOINT when set."""
    return {
        "name": "fetch-weights",
        "image": image,
        "args": ["model", "fetch", source.url, "--cache", CACHE_PATH],
        "env": env,
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


def model_selector(bot: ChatBot) -> str:
    """The label selector of the model server's Pods, for the scale subresource."""
    return ",".join(f"{key}={value}" for key, value in selector_labels(bot, COMPONENT).items())


def render_model_server(bot: ChatBot, *, image: str) -> list[Manifest]:
    """The model server; `image` (Tertulia's) runs the init container that fetches weights."""
    model = bot.spec.model
    if model.engine == "endpoint":
        return []
    port = PORTS[model.engine]
    container, volumes = _ENGINES[model.engine](bot, model, port)
    container.setdefault("ports", [{"name": "http", "containerPort": port}])
    container["env"] = [*container.get("env", []), *model.env]
    container["resources"] = _resources(model)
    cache_mount = container.pop("cache_path")
    container["volumeMounts"] = [
        *container.get("volumeMounts", []),
        {"name": "cache", "mountPath": cache_mount},
    ]
    volumes.append(_cache_volume(bot))
    extra: dict[str, Any] = {}
    source = parse(model.source) if model.source else None
    if source is not None and source.scheme == "pvc":
        volume, mount = claim_volume(source)
        volumes.append(volume)
        container["volumeMounts"].append(mount)
    elif source is not None and source.downloads and model.engine == "llamacpp":
        env = [*_token_env(model, "HF_TOKEN"), *model.env]
        extra["initContainers"] = [fetch_weights(source, image, env)]
        # The fetcher runs as the image's user: a new volume is made its group's, once.
        extra["securityContext"] = {
            "fsGroup": FETCH_USER,
            "fsGroupChangePolicy": "OnRootMismatch",
        }
    pod = pod_spec(
        bot,
        [container],
        volumes=volumes,
        nodeSelector=model.node_selector or None,
        tolerations=model.tolerations or None,
        affinity=model.affinity,
        terminationGracePeriodSeconds=60,
        **extra,
    )
    pod = {key: value for key, value in pod.items() if value is not None}
    manifests = [
        deployment(
            bot,
            COMPONENT,
            model.replicas,
            pod,
            # A cache volume is ReadWriteOnce: replace pods rather than surge beside them.
            strategy={"type": "Recreate"} if model.cache else None,
        ),
        # Ollama serves no Prometheus metrics; vLLM and llama.cpp (with --metrics) do.
        service(bot, COMPONENT, port, metrics=model.engine != "ollama"),
    ]
    if model.cache is not None:
        claim: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": model.cache.size}},
        }
        if model.cache.storage_class_name:
            claim["storageClassName"] = model.cache.storage_class_name
        manifests.insert(
            0,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": metadata(bot, COMPONENT, bot.child("model-cache")),
                "spec": claim,
            },
        )
    return manifests


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
        return {"name": "cache", "emptyDir": {}}
    return {"name": "cache", "persistentVolumeClaim": {"claimName": bot.child("model-cache")}}


def _token_env(model: ModelSpec, variable: str) -> list[dict[str, Any]]:
    if model.token_secret_ref is None:
        return []
    ref = model.token_secret_ref
    return [{"name": variable, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def _vllm(bot: ChatBot, model: ModelSpec, port: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    name = served_model_name(model)
    weights = name
    if model.source is not None:
        source = parse(model.source)
        weights = weights_file(source) if source.scheme == "pvc" else source.location
    args = [
        "--model", weights,
        "--served-model-name", name,
        "--port", str(port),
        "--tensor-parallel-size", str(model.gpu_count),
        *model.args,
    ]  # fmt: skip
    container = {
        "name": "vllm",
        "image": model.image or images.VLLM,
        "args": args,
        "env": [{"name": "HF_HOME", "value": "/cache/huggingface"}, *_token_env(model, "HF_TOKEN")],
        "startupProbe": http_probe("/health", port, **_STARTUP),
        "readinessProbe": http_probe("/health", port, periodSeconds=5),
        "livenessProbe": http_probe("/health", port, periodSeconds=15, failureThreshold=4),
        # Tensor-parallel workers talk through shared memory.
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],  # noqa: S108 - a memory volume
        "cache_path": "/cache",
    }
    return container, [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]


def _ollama(
    bot: ChatBot, model: ModelSpec, port: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    name = served_model_name(model)
    # Serve, pull the model into the cache volume, then keep serving: ready once pulled.
    script = (
        "ollama serve & server=$!; "
        "until ollama list >/dev/null 2>&1; do sleep 1; done; "
        f"ollama pull '{name}' && wait $server"
    )
    container = {
        "name": "ollama",
        "image": model.image or images.OLLAMA,
        "command": ["/bin/sh", "-c", script],
        "args": model.args,
        "env": [
            {"name": "OLLAMA_HOST", "value": f"0.0.0.0:{port}"},
            {"name": "OLLAMA_MODELS", "value": "/cache/models"},
        ],
        "startupProbe": {"exec": {"command": ["ollama", "show", name]}, **_STARTUP},
        "readinessProbe": http_probe("/api/tags", port, periodSeconds=5),
        "livenessProbe": http_probe("/api/tags", port, periodSeconds=15, failureThreshold=4),
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
        "--ctx-size", "8192",
        "--metrics",
        *(["--n-gpu-layers", "999"] if model.gpu_count else []),
        *model.args,
    ]  # fmt: skip
    container = {
        "name": "llama-server",
        # The CPU build reserves no GPU it could use: with GPUs, the CUDA build.
        "image": model.image or (images.LLAMACPP_CUDA if model.gpu_count else images.LLAMACPP),
        "args": args,
        "startupProbe": http_probe("/health", port, **_STARTUP),
        "readinessProbe": http_probe("/health", port, periodSeconds=5),
        "livenessProbe": http_probe("/health", port, periodSeconds=15, failureThreshold=4),
        "cache_path": CACHE_PATH,
    }
    return container, []


_ENGINES = {"vllm": _vllm, "ollama": _ollama, "llamacpp": _llamacpp}
