"""Memory: one Redis for the ChatBot's conversations, rate-limit buckets and event de-dup."""

from __future__ import annotations

from tertulia.operator.api import ChatBot
from tertulia.operator.render import images
from tertulia.operator.render.common import (
    Manifest,
    deployment,
    pod_spec,
    resources,
    restricted_container_security,
    service,
)

COMPONENT = "memory"
PORT = 6379


def redis_url(bot: ChatBot) -> str:
    return f"redis://{bot.child(COMPONENT)}.{bot.namespace}.svc:{PORT}/0"


def render_memory(bot: ChatBot, *, registry: str = "") -> list[Manifest]:
    memory = bot.spec.gateway.memory
    container = {
        "name": "redis",
        "image": memory.image or images.mirrored(images.REDIS, registry),
        # Memory is a cache of conversations: bounded, least-recently-used entries go first.
        "args": [
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
        "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 10},
        "resources": resources(
            memory.resources,
            {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        ),
        "securityContext": restricted_container_security(),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    pod = pod_spec(
        bot,
        [container],
        volumes=[{"name": "data", "emptyDir": {}}],
        securityContext={"runAsNonRoot": True, "runAsUser": 999, "fsGroup": 999},
    )
    return [deployment(bot, COMPONENT, 1, pod), service(bot, COMPONENT, PORT, "redis")]
