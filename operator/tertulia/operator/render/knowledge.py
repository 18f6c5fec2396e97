"""The knowledge base: Weaviate (StatefulSet, Services, volume) and the Job that ingests sources."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tertulia.operator.api import ChatBot
from tertulia.operator.render.common import (
    Manifest,
    http_probe,
    labels,
    metadata,
    pod_spec,
    restricted_container_security,
    selector_labels,
)

COMPONENT = "knowledge-base"
INGEST = "ingest"
HTTP_PORT = 8080
GRPC_PORT = 50051
WEAVIATE_IMAGE = "cr.weaviate.io/semitechnologies/weaviate:1.33.0"


def weaviate_url(bot: ChatBot) -> str:
    return f"http://{bot.child(COMPONENT)}.{bot.namespace}.svc:{HTTP_PORT}"


def render_knowledge_base(bot: ChatBot, *, image: str) -> list[Manifest]:
    knowledge = bot.spec.knowledge_base
    if not knowledge.enabled:
        return []
    claim: dict[str, Any] = {
        "metadata": {"name": "data", "labels": labels(bot, COMPONENT)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": knowledge.storage}},
        },
    }
    if knowledge.storage_class_name:
        claim["spec"]["storageClassName"] = knowledge.storage_class_name
    container = {
        "name": "weaviate",
        "image": WEAVIATE_IMAGE,
        "env": [
            {"name": "PERSISTENCE_DATA_PATH", "value": "/var/lib/weaviate"},
            {"name": "DEFAULT_VECTORIZER_MODULE", "value": "none"},
            {"name": "ENABLE_MODULES", "value": ""},
            {"name": "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED", "value": "true"},
            {"name": "CLUSTER_HOSTNAME", "value": "node1"},
            {"name": "GRPC_PORT", "value": str(GRPC_PORT)},
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "grpc", "containerPort": GRPC_PORT},
        ],
        "readinessProbe": http_probe("/v1/.well-known/ready", "http", periodSeconds=5),
        "livenessProbe": http_probe("/v1/.well-known/live", "http", periodSeconds=15),
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
        "securityContext": restricted_container_security(),
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/weaviate"}],
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(bot, COMPONENT),
        "spec": {
            "serviceName": bot.child(COMPONENT),
            "replicas": 1,
            "selector": {"matchLabels": selector_labels(bot, COMPONENT)},
            "template": {
                "metadata": {"labels": labels(bot, COMPONENT)},
                "spec": pod_spec(
                    bot,
                    [container],
                    securityContext={"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                ),
            },
            "volumeClaimTemplates": [claim],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(bot, COMPONENT),
        "spec": {
            "selector": selector_labels(bot, COMPONENT),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
            ],
        },
    }
    manifests = [statefulset, service]
    if knowledge.sources:
        manifests.append(_ingest_job(bot, image))
    return manifests


def _ingest_job(bot: ChatBot, image: str) -> Manifest:
    """Ingest every source; the Job's name carries a hash of them, so a change re-runs it."""
    knowledge = bot.spec.knowledge_base
    sources = [source.model_dump(by_alias=True, exclude_none=True) for source in knowledge.sources]
    digest = hashlib.sha256(
        json.dumps([sources, knowledge.embedding.model_dump()], sort_keys=True).encode()
    ).hexdigest()[:8]
    volumes, mounts, paths = [], [], []
    for index, source in enumerate(knowledge.sources):
        volume = f"source-{index}"
        if source.config_map is not None:
            volumes.append({"name": volume, "configMap": {"name": source.config_map.name}})
        elif source.persistent_volume_claim is not None:
            volumes.append(
                {
                    "name": volume,
                    "persistentVolumeClaim": {
                        "claimName": source.persistent_volume_claim.name,
                        "readOnly": True,
                    },
                }
            )
        mounts.append({"name": volume, "mountPath": f"/sources/{index}", "readOnly": True})
        paths.append(f"/sources/{index}")
    container = {
        "name": INGEST,
        "image": image,
        "args": ["kb", "ingest", "--prune", *paths],
        "env": [
            {"name": "TERTULIA_KB_WEAVIATE_URL", "value": weaviate_url(bot)},
            {"name": "TERTULIA_KB_COLLECTION", "value": bot.name},
            {"name": "TERTULIA_KB_EMBEDDING_MODEL", "value": knowledge.embedding.model},
        ],
        "securityContext": restricted_container_security(),
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(bot, INGEST, f"{bot.child(INGEST)}-{digest}"),
        "spec": {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels(bot, INGEST)},
                "spec": pod_spec(
                    bot,
                    [container],
                    volumes=volumes,
                    restartPolicy="OnFailure",
                    securityContext={"runAsNonRoot": True, "runAsUser": 10001},
                ),
            },
        },
    }
