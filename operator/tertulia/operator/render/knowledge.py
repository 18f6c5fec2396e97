"""The knowledge base: Weaviate (StatefulSet, Service, volume) behind an API key the operator
generates, and the Job that ingests the sources, named by a digest of them so a change runs
a new one. With several replicas, Weaviate's own cluster: nodes that find each other through a
headless Service, agree on the schema by Raft and hold a copy of every chunk each."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tertulia.operator.api import ChatBot, S3BackupSpec, SecretKeyRef
from tertulia.operator.render import images
from tertulia.operator.render.common import (
    Manifest,
    claim_spec,
    disruption_budget,
    headless_service,
    http_probe,
    labels,
    metadata,
    pod_spec,
    resources,
    restricted_container_security,
    secrets_version,
    selector_labels,
    spread,
    stateful_set,
)
from tertulia.operator.render.embeddings import COMPONENT as EMBEDDINGS
from tertulia.operator.render.embeddings import embeddings_url, runs_embeddings_server
from tertulia.operator.render.model import server_key_volume

COMPONENT = "knowledge-base"
INGEST = "ingest"
BACKUP = "knowledge-backup"
BACKUP_PATH = "/var/lib/weaviate-backups"
HTTP_PORT = 8080
GRPC_PORT = 50051
# Weaviate's chart (weaviate/weaviate-helm, weaviate/values.yaml): livenessProbe
# initialDelaySeconds 900, terminationGracePeriodSeconds 600.
STARTUP_SECONDS = 900
# Probed often while it starts, so a quick start is ready at once.
STARTUP_PERIOD = 2
TERMINATION_GRACE_SECONDS = 600
# Between Weaviate's nodes: membership (gossip), data, and Raft; Weaviate's defaults.
GOSSIP_PORT = 7000
DATA_PORT = 7001
RAFT_PORT = 8300
RAFT_RPC_PORT = 8301
KEY_PATH = "/etc/tertulia/knowledge-base"
# Long enough for Weaviate to start and the embeddings server to fetch its model.
INGEST_WAIT_SECONDS = 900
KEY = "api-key"
# `tertulia kb ingest` exits 1 when a document could not be read.
INGEST_UNREADABLE_EXIT = 1
WEAVIATE_USER = "tertulia"


def weaviate_url(bot: ChatBot) -> str:
    external = bot.spec.knowledge_base.external
    if external is not None:
        return external.url
    return f"http://{bot.child(COMPONENT)}.{bot.namespace}.svc:{HTTP_PORT}"


def nodes_service(bot: ChatBot) -> str:
    """The headless Service through which Weaviate's nodes find each other."""
    return bot.child(f"{COMPONENT}-nodes")


def raft_voters(replicas: int) -> int:
    """How many nodes vote in Weaviate's Raft (its schema), as Weaviate's own chart counts
    them: one below three nodes, three up to nine."""
    return 1 if replicas < 3 else 3


def node_name(bot: ChatBot, index: int) -> str:
    """Weaviate's node `index`: its pod's name, which is also its name in the cluster."""
    return f"{bot.child(COMPONENT)}-{index}"


def node_address(bot: ChatBot, index: int) -> str:
    """The DNS name of Weaviate's node `index`, its pod's record in the headless Service."""
    return f"{node_name(bot, index)}.{nodes_service(bot)}.{bot.namespace}.svc"


# Run by the init container of each node, with the first node's name and a limit in seconds.
# PID 1 ignores a signal it has no handler for: the handler lets a pod deleted while it
# waits stop at once rather than at the end of its grace period.
_FIRST_NODE_WAIT = """import signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
name, limit = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + limit
while True:
    try:
        socket.getaddrinfo(name, None)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"{name} did not resolve within {limit:.0f} s")
        time.sleep(1)
"""
FIRST_NODE_WAIT_SECONDS = 600


def _first_node_wait(bot: ChatBot, image: str) -> dict[str, Any]:
    """An init container that waits until the first node's name resolves. Weaviate joins
    the others once, at start, and only when the first name it is given resolves; a node
    that starts before the headless Service lists the first would run alone for good."""
    return {
        "name": "find-first-node",
        "image": image,
        "command": ["python", "-c", _FIRST_NODE_WAIT],
        "args": [node_address(bot, 0), str(FIRST_NODE_WAIT_SECONDS)],
        "securityContext": restricted_container_security(),
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
    }


def _cluster_env(bot: ChatBot) -> list[dict[str, Any]]:
    """How a Weaviate node names itself and finds the others: as the pod, by the pods'
    names in the headless Service, the first node's first; the first `raft_voters` vote."""
    replicas = bot.spec.knowledge_base.replicas
    if replicas == 1:
        # The name a single node has always had: its data and schema are recorded under it.
        return [
            {"name": "CLUSTER_HOSTNAME", "value": "node1"},
            {"name": "RAFT_BOOTSTRAP_EXPECT", "value": "1"},
        ]
    voters = raft_voters(replicas)
    pods = ",".join(node_name(bot, index) for index in range(voters))
    return [
        {"name": "CLUSTER_HOSTNAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "CLUSTER_GOSSIP_BIND_PORT", "value": str(GOSSIP_PORT)},
        {"name": "CLUSTER_DATA_BIND_PORT", "value": str(DATA_PORT)},
        {
            "name": "CLUSTER_JOIN",
            "value": ",".join(node_address(bot, index) for index in range(replicas)),
        },
        {"name": "RAFT_PORT", "value": str(RAFT_PORT)},
        {"name": "RAFT_INTERNAL_RPC_PORT", "value": str(RAFT_RPC_PORT)},
        {"name": "RAFT_JOIN", "value": pods},
        {"name": "RAFT_BOOTSTRAP_EXPECT", "value": str(voters)},
        # Collections made without a factor (by hand) get a copy on every node too.
        {"name": "REPLICATION_MINIMUM_FACTOR", "value": str(replicas)},
    ]


def knowledge_base_secret(bot: ChatBot) -> str:
    """The Secret of the in-cluster Weaviate's key, which the operator generates."""
    return bot.child(COMPONENT)


def knowledge_base_key(bot: ChatBot) -> tuple[str, str]:
    """The Secret and key holding Weaviate's API key: the generated one, or an external
    Weaviate's."""
    external = bot.spec.knowledge_base.external
    if external is not None:
        return external.api_key_secret_ref.name, external.api_key_secret_ref.key
    return knowledge_base_secret(bot), KEY


def generated_knowledge_base_key(bot: ChatBot, key: str) -> Manifest:
    """Weaviate's API key, made once by the operator; the gateway and ingest Job mount it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(bot, COMPONENT, knowledge_base_secret(bot), watched=True),
        "type": "Opaque",
        "stringData": {KEY: key},
    }


def knowledge_base_settings(bot: ChatBot) -> dict[str, Any]:
    """The `knowledge_base` section of the gateway's settings (and the ingest Job's)."""
    knowledge = bot.spec.knowledge_base
    if not knowledge.enabled:
        return {"enabled": False}
    grpc_url = knowledge.external.grpc_url if knowledge.external else None
    return {
        "enabled": True,
        "weaviate_url": weaviate_url(bot),
        "grpc_port": GRPC_PORT,
        **({"grpc_url": grpc_url} if grpc_url else {}),
        "api_key_file": f"{KEY_PATH}/{KEY}",
        "collection": bot.name,
        "replication_factor": knowledge.replicas,
        "embedding": {
            "url": embeddings_url(bot),
            "model": knowledge.embedding.model,
            **({"api_key_file": key[2]} if (key := embedding_key_volume(bot)) else {}),
        },
        "alpha": knowledge.alpha,
        "top_k": knowledge.top_k,
    }


def embedding_key_volume(bot: ChatBot) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """The embeddings server's key, for those who call it (the gateway, the ingest Job), as
    a volume, its mount and the file to read; None when the server asks none."""
    if runs_embeddings_server(bot) and bot.spec.knowledge_base.embedding.require_api_key:
        return server_key_volume(bot, EMBEDDINGS)
    return None


def key_volume(bot: ChatBot) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume of Weaviate's API key, and its mount."""
    secret, key = knowledge_base_key(bot)
    return (
        {
            "name": "knowledge-base-key",
            "secret": {"secretName": secret, "items": [{"key": key, "path": KEY}]},
        },
        {"name": "knowledge-base-key", "mountPath": KEY_PATH, "readOnly": True},
    )


def render_knowledge_base(
    bot: ChatBot,
    *,
    image: str,
    registry: str = "",
    source_digests: dict[str, str] | None = None,
    secret_versions: dict[str, str] | None = None,
) -> list[Manifest]:
    knowledge = bot.spec.knowledge_base
    if not knowledge.enabled:
        return []
    if knowledge.external is not None:
        # Another's Weaviate: only the ingest runs here.
        return [_ingest_job(bot, image, source_digests or {})] if knowledge.sources else []
    claim = {
        "metadata": {"name": "data", "labels": labels(bot, COMPONENT)},
        "spec": claim_spec(knowledge.storage, knowledge.storage_class_name),
    }
    container: dict[str, Any] = {
        "name": "weaviate",
        "image": knowledge.image or images.mirrored(images.WEAVIATE, registry),
        "env": [
            {"name": "PERSISTENCE_DATA_PATH", "value": "/var/lib/weaviate"},
            {"name": "DEFAULT_VECTORIZER_MODULE", "value": "none"},
            # Backups are written by Weaviate itself, to their own volume.
            {"name": "ENABLE_MODULES", "value": _backup_module(bot)},
            {"name": "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED", "value": "false"},
            {"name": "AUTHENTICATION_APIKEY_ENABLED", "value": "true"},
            {
                "name": "AUTHENTICATION_APIKEY_ALLOWED_KEYS",
                "valueFrom": {"secretKeyRef": {"name": knowledge_base_secret(bot), "key": KEY}},
            },
            {"name": "AUTHENTICATION_APIKEY_USERS", "value": WEAVIATE_USER},
            {"name": "AUTHORIZATION_ADMINLIST_ENABLED", "value": "true"},
            {"name": "AUTHORIZATION_ADMINLIST_USERS", "value": WEAVIATE_USER},
            *_cluster_env(bot),
            {"name": "GRPC_PORT", "value": str(GRPC_PORT)},
            {"name": "DISABLE_TELEMETRY", "value": "true"},
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "grpc", "containerPort": GRPC_PORT},
        ],
        # As Weaviate's own chart (weaviate/weaviate-helm, weaviate/values.yaml) runs it: a start
        # that reads a large index, or a slow disk, has 15 minutes (the chart's liveness
        # initialDelaySeconds: 900; a startup probe here, so a quick start is not held back),
        # and a live node busy importing is restarted only after 5 minutes of silence.
        "startupProbe": http_probe(
            "/v1/.well-known/live",
            "http",
            periodSeconds=STARTUP_PERIOD,
            timeoutSeconds=3,
            failureThreshold=STARTUP_SECONDS // STARTUP_PERIOD,
        ),
        "readinessProbe": http_probe(
            "/v1/.well-known/ready", "http", periodSeconds=5, timeoutSeconds=3, failureThreshold=3
        ),
        "livenessProbe": http_probe(
            "/v1/.well-known/live", "http", periodSeconds=10, timeoutSeconds=3, failureThreshold=30
        ),
        "resources": resources(
            knowledge.resources,
            {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        ),
        "securityContext": restricted_container_security(),
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/weaviate"}],
    }
    volumes: list[dict[str, Any]] = []
    if knowledge.backup is not None and knowledge.backup.s3 is not None:
        container["env"] += _s3_env(knowledge.backup.s3)
    elif knowledge.backup is not None:
        container["env"].append({"name": "BACKUP_FILESYSTEM_PATH", "value": BACKUP_PATH})
        container["volumeMounts"].append({"name": "backups", "mountPath": BACKUP_PATH})
        volumes.append(
            {
                "name": "backups",
                "persistentVolumeClaim": {"claimName": bot.child("knowledge-backups")},
            }
        )
    replicas = knowledge.replicas
    pod: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        # Weaviate flushes its memtables on SIGTERM: the chart's 10 minutes to do it.
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        **({"volumes": volumes} if volumes else {}),
    }
    if replicas > 1:
        container["ports"] += [
            {"name": "gossip", "containerPort": GOSSIP_PORT},
            {"name": "data", "containerPort": DATA_PORT},
            {"name": "raft", "containerPort": RAFT_PORT},
            {"name": "raft-rpc", "containerPort": RAFT_RPC_PORT},
        ]
        pod["topologySpreadConstraints"] = spread(bot, COMPONENT, revision_label=None)
        pod["initContainers"] = [_first_node_wait(bot, image)]
    statefulset = stateful_set(
        bot,
        COMPONENT,
        pod_spec(bot, [container], **pod),
        # Weaviate reads its key and the bucket's from the environment: a new one restarts it.
        annotations=secrets_version(
            secret_versions,
            [knowledge_base_secret(bot), *(ref.name for ref in backup_secrets(bot))],
        ),
        claims=[claim],
    )
    if replicas > 1:
        # Every node starts at once: the voters wait for each other to form the cluster.
        statefulset["spec"] |= {
            "replicas": replicas,
            "serviceName": nodes_service(bot),
            "podManagementPolicy": "Parallel",
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
    if replicas > 1:
        manifests += [_nodes_service(bot), disruption_budget(bot, COMPONENT)]
    if knowledge.sources:
        manifests.append(_ingest_job(bot, image, source_digests or {}))
    if knowledge.backup is not None:
        manifests += _backups(bot, image)
    return manifests


def _nodes_service(bot: ChatBot) -> Manifest:
    return headless_service(
        bot,
        COMPONENT,
        nodes_service(bot),
        [{"name": "gossip", "port": GOSSIP_PORT, "targetPort": "gossip"}],
    )


def _backup_module(bot: ChatBot) -> str:
    """Weaviate's backup module: none, backup-filesystem, or backup-s3."""
    backup = bot.spec.knowledge_base.backup
    if backup is None:
        return ""
    return "backup-s3" if backup.s3 is not None else "backup-filesystem"


def _s3_env(s3: S3BackupSpec) -> list[dict[str, Any]]:
    """backup-s3's settings, as its module reads them (modules/backup-s3 in Weaviate)."""
    env: list[dict[str, Any]] = [
        {"name": "BACKUP_S3_BUCKET", "value": s3.bucket},
        {"name": "BACKUP_S3_USE_SSL", "value": "false" if s3.insecure else "true"},
    ]
    if s3.path:
        env.append({"name": "BACKUP_S3_PATH", "value": s3.path})
    if s3.endpoint:
        env.append({"name": "BACKUP_S3_ENDPOINT", "value": s3.endpoint})
    if s3.region:
        env.append({"name": "AWS_REGION", "value": s3.region})
    for name, ref in (
        ("AWS_ACCESS_KEY_ID", s3.access_key_id_secret_ref),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key_secret_ref),
    ):
        if ref is not None:
            env.append(
                {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            )
    return env


def backup_secrets(bot: ChatBot) -> list[SecretKeyRef]:
    """The Secret keys of the backup bucket's credentials, which Weaviate reads at start."""
    backup = bot.spec.knowledge_base.backup
    if not bot.spec.knowledge_base.enabled or backup is None or backup.s3 is None:
        return []
    refs = (backup.s3.access_key_id_secret_ref, backup.s3.secret_access_key_secret_ref)
    return [ref for ref in refs if ref is not None]


def _backups(bot: ChatBot, image: str) -> list[Manifest]:
    """The backup volume (a claim of its own, not the StatefulSet's template, so backups can
    be turned on for a knowledge base that exists) unless they go to a bucket, and the
    CronJob that asks Weaviate for a backup on the schedule."""
    backup = bot.spec.knowledge_base.backup
    assert backup is not None  # noqa: S101 - callers check
    claims: list[Manifest] = []
    if backup.s3 is None:
        claims.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": metadata(bot, COMPONENT, bot.child("knowledge-backups")),
                "spec": claim_spec(backup.storage, backup.storage_class_name),
            }
        )
    key, key_mount = key_volume(bot)
    backend = {"backup_backend": "s3" if backup.s3 is not None else "filesystem"}
    container = {
        "name": "backup",
        "image": image,
        "args": ["kb", "backup"],
        "env": _settings_env("TERTULIA_KB_", knowledge_base_settings(bot) | backend),
        "securityContext": restricted_container_security(),
        "volumeMounts": [key_mount],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    cron_job = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata(bot, BACKUP),
        "spec": {
            "schedule": backup.schedule,
            # One backup at a time; a missed run (the operator or cluster down) runs late.
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": labels(bot, BACKUP)},
                "spec": {
                    "backoffLimit": 2,
                    "ttlSecondsAfterFinished": 7 * 86400,
                    "template": {
                        "metadata": {"labels": labels(bot, BACKUP)},
                        "spec": pod_spec(
                            bot,
                            [container],
                            volumes=[key],
                            restartPolicy="Never",
                            securityContext={"runAsNonRoot": True, "runAsUser": 10001},
                        ),
                    },
                },
            },
        },
    }
    return [*claims, cron_job]


def _ingest_job(bot: ChatBot, image: str, source_digests: dict[str, str]) -> Manifest:
    """Ingest every source with --prune. The Job's name carries a digest of the sources, the
    content of their ConfigMaps, the settings and the image, so a change to any runs a new Job
    (a Job's pod template cannot be changed in place)."""
    knowledge = bot.spec.knowledge_base
    sources = [source.model_dump(by_alias=True, exclude_none=True) for source in knowledge.sources]
    settings = knowledge_base_settings(bot)
    digest = hashlib.sha256(
        json.dumps([sources, settings, source_digests, image], sort_keys=True).encode()
    ).hexdigest()[:8]
    key, key_mount = key_volume(bot)
    volumes: list[dict[str, Any]] = [key]
    mounts: list[dict[str, Any]] = [key_mount]
    embedding_key = embedding_key_volume(bot)
    if embedding_key is not None:
        volumes.append(embedding_key[0])
        mounts.append(embedding_key[1])
    paths = []
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
        # Started beside Weaviate and the embeddings server, it waits for them first.
        "args": ["kb", "ingest", "--prune", "--wait", str(INGEST_WAIT_SECONDS), *paths],
        "env": _settings_env("TERTULIA_KB_", settings),
        "securityContext": restricted_container_security(),
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
        # Its last lines (what failed) become the Pod's termination message, which the
        # operator puts in KnowledgeBaseReady.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(bot, INGEST, f"{bot.child(INGEST)}-{digest}"),
        "spec": {
            "backoffLimit": 3,
            # Exit 1 is a document that cannot be read: retrying reads it again, so the Job
            # fails at once. Exit 2 (Weaviate or the embeddings server failed) is retried.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": INGEST,
                            "operator": "In",
                            "values": [INGEST_UNREADABLE_EXIT],
                        },
                    }
                ]
            },
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels(bot, INGEST)},
                "spec": pod_spec(
                    bot,
                    [container],
                    volumes=volumes,
                    # A failure policy needs each try in a Pod of its own.
                    restartPolicy="Never",
                    securityContext={"runAsNonRoot": True, "runAsUser": 10001},
                ),
            },
        },
    }


def _settings_env(prefix: str, settings: dict[str, Any]) -> list[dict[str, str]]:
    """Nested settings as environment variables, `__` between names, as pydantic reads them."""
    env = []
    for name, value in settings.items():
        if name == "enabled":
            continue
        if isinstance(value, dict):
            env.extend(_settings_env(f"{prefix}{name.upper()}__", value))
        else:
            env.append({"name": f"{prefix}{name.upper()}", "value": str(value)})
    return env
