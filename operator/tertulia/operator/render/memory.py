"""Memory: one Redis for the ChatBot's conversations, rate-limit buckets and event de-dup."""

from __future__ import annotations

from typing import Any

from tertulia.operator.api import ChatBot
from tertulia.operator.render import images
from tertulia.operator.render.common import (
    Manifest,
    deployment,
    metadata,
    pod_spec,
    resources,
    restricted_container_security,
    secrets_version,
    service,
)

COMPONENT = "memory"
PORT = 6379


def redis_url(bot: ChatBot) -> str:
    return f"redis://{bot.child(COMPONENT)}.{bot.namespace}.svc:{PORT}/0"


def memory_secret(bot: ChatBot) -> str:
    return bot.child(COMPONENT)


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


def password_volume(bot: ChatBot) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The password for the gateway: the volume, its mount, and the file to read."""
    volume = {
        "name": "memory-password",
        "secret": {
            "secretName": memory_secret(bot),
            "items": [{"key": PASSWORD_KEY, "path": PASSWORD_KEY}],
        },
    }
    mount = {"name": "memory-password", "mountPath": SECRET_PATH, "readOnly": True}
    return volume, mount, f"{SECRET_PATH}/{PASSWORD_KEY}"


def render_memory(
    bot: ChatBot, *, registry: str = "", secret_versions: dict[str, str] | None = None
) -> list[Manifest]:
    """Redis behind a generated password, reached by the gateway alone."""
    memory = bot.spec.gateway.memory
    container = {
        "name": "redis",
        "image": memory.image or images.mirrored(images.REDIS, registry),
        # Memory is a cache of conversations: bounded, least-recently-used entries go first.
        # The config file (first, as redis-server wants it) holds only the password.
        "args": [
            f"{SECRET_PATH}/{CONFIG_KEY}",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            "400mb",
            "--maxmemory-policy",
            "allkeys-lru",
        ],
        "ports": [{"name": "redis", "containerPort": PORT}],
        # redis-cli reads the password from REDISCLI_AUTH.
        "env": [
            {
                "name": "REDISCLI_AUTH",
                "valueFrom": {"secretKeyRef": {"name": memory_secret(bot), "key": PASSWORD_KEY}},
            }
        ],
        "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 10},
        "resources": resources(
            memory.resources,
            {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        ),
        "securityContext": restricted_container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "config", "mountPath": SECRET_PATH, "readOnly": True},
        ],
    }
    pod = pod_spec(
        bot,
        [container],
        volumes=[
            {"name": "data", "emptyDir": {}},
            {
                "name": "config",
                "secret": {
                    "secretName": memory_secret(bot),
                    "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
                },
            },
        ],
        securityContext={"runAsNonRoot": True, "runAsUser": 999, "fsGroup": 999},
    )
    annotations = secrets_version(secret_versions, [memory_secret(bot)])
    return [
        deployment(bot, COMPONENT, 1, pod, annotations=annotations),
        service(bot, COMPONENT, PORT, "redis"),
    ]
