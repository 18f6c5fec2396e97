"""Memory: one Redis for the ChatBot's conversations, rate-limit buckets and event de-dup,
its append-only file on a volume of its own."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from tertulia.operator.api import ChatBot
from tertulia.operator.render import images
from tertulia.operator.render.common import (
    Manifest,
    claim_spec,
    labels,
    metadata,
    pod_spec,
    resources,
    restricted_container_security,
    secrets_version,
    service,
    stateful_set,
)

COMPONENT = "memory"
PORT = 6379


def redis_url(bot: ChatBot) -> str:
    external = bot.spec.gateway.memory.external
    if external is not None:
        return external.url
    return f"redis://{bot.child(COMPONENT)}.{bot.namespace}.svc:{PORT}/0"


def memory_secret(bot: ChatBot) -> str:
    """The Secret holding Redis's password: the external Redis's, or the generated one."""
    external = bot.spec.gateway.memory.external
    return external.password_secret_ref.name if external else bot.child(COMPONENT)


def memory_secrets(bot: ChatBot) -> list[str]:
    """Every Secret the gateway reads to reach Redis."""
    external = bot.spec.gateway.memory.external
    if external is not None and external.ca_secret_ref is not None:
        return [memory_secret(bot), external.ca_secret_ref.name]
    return [memory_secret(bot)]


PASSWORD_KEY = "password"  # noqa: S105 - the key's name, not a password
CONFIG_KEY = "redis.conf"
SECRET_PATH = "/etc/tertulia/memory"  # noqa: S105 - a folder


def generated_memory_password(bot: ChatBot, password: str) -> Manifest:
    """Redis's password, made once by the operator: as the gateway reads it (`password`),
    and as a config file Redis starts with (`redis.conf`), so it is in no argument and no
    environment variable of the server."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(bot, COMPONENT, memory_secret(bot), watched=True),
        "type": "Opaque",
        "stringData": {PASSWORD_KEY: password, CONFIG_KEY: f"requirepass {password}\n"},
    }


CA_KEY = "ca.crt"
CA_PATH = "/etc/tertulia/memory-ca"


def password_volume(bot: ChatBot) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The password for the gateway: the volume, its mount, and the file to read."""
    external = bot.spec.gateway.memory.external
    key = external.password_secret_ref.key if external else PASSWORD_KEY
    volume = {
        "name": "memory-password",
        "secret": {
            "secretName": memory_secret(bot),
            "items": [{"key": key, "path": PASSWORD_KEY}],
        },
    }
    mount = {"name": "memory-password", "mountPath": SECRET_PATH, "readOnly": True}
    return volume, mount, f"{SECRET_PATH}/{PASSWORD_KEY}"


def ca_volume(bot: ChatBot) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """The external Redis's CA certificate for the gateway, when the spec names one."""
    external = bot.spec.gateway.memory.external
    if external is None or external.ca_secret_ref is None:
        return None
    ref = external.ca_secret_ref
    volume = {
        "name": "memory-ca",
        "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": CA_KEY}]},
    }
    mount = {"name": "memory-ca", "mountPath": CA_PATH, "readOnly": True}
    return volume, mount, f"{CA_PATH}/{CA_KEY}"


# Only keys with a TTL may be evicted: conversations (each carries its own), never the
# rate-limit buckets or event claims, which the gateway keeps without one (see its store).
EVICTION_POLICY = "volatile-lru"
# The share of the container's memory limit Redis may fill: the rest is for its own overhead
# and for rewriting the append-only file, which forks the server.
MAXMEMORY_SHARE = 0.75
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
DATA_PATH = "/data"


def maxmemory_bytes(resources: dict[str, Any]) -> int:
    """What Redis may hold: a share of the container's memory limit (or, without one, of its
    request)."""
    amounts = resources.get("limits", {}).get("memory") or resources.get("requests", {}).get(
        "memory"
    )
    if amounts is None:
        return 0  # no bound given: Redis's own default, none
    limit: Decimal = parse_quantity(amounts)  # type: ignore[no-untyped-call]
    return int(limit * Decimal(str(MAXMEMORY_SHARE)))


def redis_arguments(maxmemory: int, *, persistent: bool) -> list[str]:
    """redis-server's arguments after its config file: the cap, what it evicts, and the
    append-only file (written every second) when its data is on a volume."""
    arguments = ["--maxmemory", str(maxmemory), "--maxmemory-policy", EVICTION_POLICY]
    arguments += ["--save", "", "--dir", DATA_PATH]
    if persistent:
        return [*arguments, "--appendonly", "yes", "--appendfsync", "everysec"]
    return [*arguments, "--appendonly", "no"]


def render_memory(
    bot: ChatBot, *, registry: str = "", secret_versions: dict[str, str] | None = None
) -> list[Manifest]:
    """Redis behind a generated password, reached by the gateway alone, its data on a claim
    of its own: conversations, rate limits and event claims outlive the pod. Nothing with an
    external Redis."""
    memory = bot.spec.gateway.memory
    if memory.external is not None:
        return []
    limits = resources(memory.resources, DEFAULT_RESOURCES)
    container = {
        "name": "redis",
        "image": memory.image or images.mirrored(images.REDIS, registry),
        # The config file (first, as redis-server wants it) holds only the password.
        "args": [
            f"{SECRET_PATH}/{CONFIG_KEY}",
            *redis_arguments(maxmemory_bytes(limits), persistent=memory.persistent),
        ],
        "ports": [{"name": "redis", "containerPort": PORT}],
        # redis-cli reads the password from REDISCLI_AUTH.
        "env": [
            {
                "name": "REDISCLI_AUTH",
                "valueFrom": {"secretKeyRef": {"name": memory_secret(bot), "key": PASSWORD_KEY}},
            }
        ],
        # Ready once the append-only file is loaded: Redis answers LOADING (not PONG) until then.
        "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 10},
        "resources": limits,
        "securityContext": restricted_container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_PATH},
            {"name": "config", "mountPath": SECRET_PATH, "readOnly": True},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "secret": {
                "secretName": memory_secret(bot),
                "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
            },
        }
    ]
    if not memory.persistent:
        volumes.insert(0, {"name": "data", "emptyDir": {}})
    pod = pod_spec(
        bot,
        [container],
        volumes=volumes,
        securityContext={"runAsNonRoot": True, "runAsUser": 999, "fsGroup": 999},
    )
    claims = []
    if memory.persistent:
        claims.append(
            {
                "metadata": {"name": "data", "labels": labels(bot, COMPONENT)},
                "spec": claim_spec(memory.storage, memory.storage_class_name),
            }
        )
    statefulset = stateful_set(
        bot,
        COMPONENT,
        pod,
        annotations=secrets_version(secret_versions, [memory_secret(bot)]),
        claims=claims,
    )
    if claims:
        statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] = {
            "whenDeleted": "Delete",
            "whenScaled": "Retain",
        }
    return [statefulset, service(bot, COMPONENT, PORT, "redis")]
