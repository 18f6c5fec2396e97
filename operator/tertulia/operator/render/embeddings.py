"""The knowledge base's embeddings server: llama.cpp on CPU serving the embedding model at
/v1/embeddings, so a knowledge base needs nothing but its ChatBot. Rendered when the knowledge
base is on and no `embedding.endpoint` is given; the ingest Job and the gateway call it."""

from __future__ import annotations

from typing import Any

from tertulia.common.weights import parse
from tertulia.operator.api import ChatBot
from tertulia.operator.render import images
from tertulia.operator.render.common import (
    Manifest,
    cpu_threads,
    deployment,
    http_probe,
    pod_spec,
    resources,
    restricted_container_security,
    service,
)
from tertulia.operator.render.model import (
    CACHE_PATH,
    FETCH_USER,
    claim_volume,
    fetch_weights,
    hub_env,
    server_key_volume,
    weights_file,
)

COMPONENT = "embeddings"
# The embedding model's volume: a BERT-sized GGUF is tens of megabytes.
CACHE_SIZE = "2Gi"
PORT = 8080
# The batch when the context is the GGUF's own: the BERT family's 512 positions. An input
# longer than the batch is refused ("too large to process") and split by the caller.
DEFAULT_BATCH = 512
# The pooling each model card names, by the start of the model's name (its last segment):
# BAAI/bge-* (CLS), mixedbread-ai/mxbai-embed-* (CLS), Snowflake/snowflake-arctic-embed-* (CLS);
# sentence-transformers/all-MiniLM-* and all-mpnet-* (mean, their 1_Pooling config),
# nomic-ai/nomic-embed-text-* (mean), intfloat/e5-* and multilingual-e5-* (average pooling).
POOLING_BY_MODEL = (
    ("bge-", "cls"),
    ("mxbai-embed", "cls"),
    ("snowflake-arctic-embed", "cls"),
    ("all-minilm", "mean"),
    ("all-mpnet", "mean"),
    ("nomic-embed-text", "mean"),
    ("e5-", "mean"),
    ("multilingual-e5-", "mean"),
)


def pooling_of(bot: ChatBot) -> str | None:
    """The pooling set, else the one the model card names for a model Tertulia knows, else
    none (llama.cpp reads the GGUF's `pooling_type`)."""
    embedding = bot.spec.knowledge_base.embedding
    if embedding.pooling is not None:
        return embedding.pooling
    name = embedding.model.rsplit("/", 1)[-1].lower()
    return next((pooling for start, pooling in POOLING_BY_MODEL if name.startswith(start)), None)


def runs_embeddings_server(bot: ChatBot) -> bool:
    knowledge = bot.spec.knowledge_base
    return knowledge.enabled and knowledge.embedding.endpoint is None


def embeddings_url(bot: ChatBot) -> str:
    """The OpenAI-compatible base URL of the embeddings: the one named, else the server's."""
    endpoint = bot.spec.knowledge_base.embedding.endpoint
    if endpoint is not None:
        return endpoint.rstrip("/")
    return f"http://{bot.child(COMPONENT)}.{bot.namespace}.svc:{PORT}/v1"


def render_embeddings(bot: ChatBot, *, image: str, registry: str = "") -> list[Manifest]:
    if not runs_embeddings_server(bot):
        return []
    embedding = bot.spec.knowledge_base.embedding
    source = parse(embedding.source)
    args = [
        "--model", weights_file(source),
        "--alias", embedding.model,
        "--host", "0.0.0.0",  # noqa: S104 - inside its pod, behind its Service
        "--port", str(PORT),
        "--embeddings",
        # The model's trained positions: a larger context lets an input past them reach the
        # position table (llama.cpp warns "n_ctx_seq > n_ctx_train"). An input is embedded in
        # one ubatch, so the batch holds the longest input. (tools/server/README.md)
        "--ctx-size", str(embedding.context_length or 0),
        "--batch-size", str(embedding.context_length or DEFAULT_BATCH),
        "--ubatch-size", str(embedding.context_length or DEFAULT_BATCH),
        "--metrics",
    ]  # fmt: skip
    pooling = pooling_of(bot)
    if pooling is not None:
        args += ["--pooling", pooling]
    container_resources = resources(
        embedding.resources,
        {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
    )
    args += ["--threads", str(cpu_threads(container_resources))]
    container: dict[str, Any] = {
        "name": "llama-server",
        "image": embedding.image or images.mirrored(images.LLAMACPP, registry),
        "args": args,
        "ports": [{"name": "http", "containerPort": PORT}],
        "startupProbe": http_probe("/health", PORT, periodSeconds=5, failureThreshold=120),
        "readinessProbe": http_probe("/health", PORT, periodSeconds=5, timeoutSeconds=3),
        "livenessProbe": http_probe(
            "/health", PORT, periodSeconds=15, timeoutSeconds=5, failureThreshold=4
        ),
        "resources": container_resources,
        # llama-server needs no root and writes nothing but its cache.
        "securityContext": restricted_container_security(),
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_PATH, "readOnly": True}],
    }
    volumes: list[dict[str, Any]] = []
    init_containers: list[dict[str, Any]] = []
    if source.scheme == "pvc":
        # Read from the claim where it lies: nothing to fetch, no cache.
        volume, mount = claim_volume(source)
        volumes.append(volume)
        container["volumeMounts"] = [mount]
    else:
        volumes.append({"name": "cache", "emptyDir": {"sizeLimit": CACHE_SIZE}})
        init_containers.append(
            fetch_weights(source, image, hub_env(bot.spec.model), max_size=CACHE_SIZE)
        )
    if embedding.require_api_key:
        volume, mount, path = server_key_volume(bot, COMPONENT)
        volumes.append(volume)
        container["volumeMounts"].append(mount)
        args += ["--api-key-file", path]
    pod = pod_spec(
        bot,
        [container],
        volumes=volumes,
        **({"initContainers": init_containers} if init_containers else {}),
        securityContext={
            "runAsNonRoot": True,
            "runAsUser": FETCH_USER,
            "fsGroup": FETCH_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    )
    # llama.cpp asks its key on /metrics too: with one, the scrapers cannot read them.
    metrics = None if embedding.require_api_key else "http"
    return [deployment(bot, COMPONENT, 1, pod), service(bot, COMPONENT, PORT, metrics=metrics)]
