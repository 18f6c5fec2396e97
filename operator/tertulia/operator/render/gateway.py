"""The gateway: its config file (a ConfigMap), Deployment, Service, and optional Ingress, HPA
and PodDisruptionBudget."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

import yaml

from tertulia.operator.api import GROUP, PLURAL, ChatBot
from tertulia.operator.render.common import (
    METRICS_PORT,
    Manifest,
    deployment,
    disruption_budget,
    http_probe,
    metadata,
    pod_spec,
    resources,
    restricted_container_security,
    secrets_version,
    service,
    spread,
)
from tertulia.operator.render.knowledge import (
    embedding_key_volume,
    key_volume,
    knowledge_base_key,
    knowledge_base_settings,
)
from tertulia.operator.render.memory import ca_volume, memory_secrets, password_volume, redis_url
from tertulia.operator.render.model import (
    backend_key_volume,
    model_base_url,
    needs_server_keys,
    replica_capacity,
    replicas_address,
    served_model_name,
    server_keys_secret,
)

COMPONENT = "gateway"
# The API key identities of the bots, one per platform (render/platforms.py mounts them).
BOT_IDENTITIES = ("slack", "discord", "telegram")
# The web chat's key: traded by a browser for a session of its own (never the admin's).
WEB_IDENTITY = "web"
GENERATED_KEYS = ("admin", WEB_IDENTITY, *BOT_IDENTITIES)
PORT = 8080
CONFIG_PATH = "/etc/tertulia"
KEYS_PATH = "/etc/tertulia/api-keys"
# Seconds a stopping gateway keeps serving, failing its readiness, while its Service's
# endpoints and any load balancer stop sending to it (services/tertulia/gateway/drain.py).
DRAIN_DELAY_SECONDS = 5
# Seconds the kubelet allows past the drain before it kills the container.
KILL_MARGIN_SECONDS = 5


def api_keys_secret(bot: ChatBot) -> str:
    """The Secret of API keys: the user's, or the one the operator generates."""
    ref = bot.spec.gateway.api_keys_secret_ref
    return ref.name if ref else bot.child("api-keys")


def generated_api_keys(bot: ChatBot, keys: dict[str, str]) -> Manifest:
    """The Secret of API keys the operator makes when the spec names none: one per platform,
    the key its bot presents; `web`, which opens the web chat; and `admin`, for the knowledge
    base's admin API."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(bot, COMPONENT, api_keys_secret(bot), watched=True),
        "type": "Opaque",
        "stringData": keys,
    }


def gateway_url(bot: ChatBot) -> str:
    return f"http://{bot.child(COMPONENT)}.{bot.namespace}.svc:{PORT}"


def gateway_config(bot: ChatBot) -> dict[str, Any]:
    """The gateway's settings file, in its own schema (services/tertulia/gateway/settings.py)."""
    spec, gateway = bot.spec, bot.spec.gateway
    backend: dict[str, Any] = {"url": model_base_url(bot), "model": served_model_name(spec.model)}
    replicas = replicas_address(bot)
    if replicas is not None:
        backend |= {
            "replicas": replicas,
            "routing": spec.model.routing,
            "replica_capacity": replica_capacity(spec.model),
        }
    if spec.model.tools.enabled:
        backend["tools"] = True
    backend_key = backend_key_volume(bot)
    if backend_key is not None:
        backend["api_key_file"] = backend_key[2]
    config: dict[str, Any] = {
        "host": "0.0.0.0",  # noqa: S104 - inside its pod, behind its Service
        "port": PORT,
        "model_name": bot.name,
        "metrics_port": METRICS_PORT,
        "api_docs": gateway.api_docs,
        "system_prompt": gateway.system_prompt,
        "temperature": gateway.temperature,
        "max_tokens": gateway.max_tokens,
        "redis_url": redis_url(bot),
        "redis_password_file": password_volume(bot)[2],
        "redis_ca_file": ca[2] if (ca := ca_volume(bot)) else None,
        "api_keys_dir": KEYS_PATH,
        # A bot's key acts only for its platform's users.
        "user_prefixes": {platform: f"{platform}:" for platform in BOT_IDENTITIES},
        "backend": backend,
        "memory": {
            "max_turns": gateway.memory.max_turns,
            "max_tokens": gateway.memory.max_tokens,
            "ttl_seconds": gateway.memory.ttl_seconds,
            "when_unavailable": gateway.memory.when_unavailable,
        },
        "rate_limit": {
            "requests_per_minute": gateway.rate_limit.requests_per_minute,
            "burst": gateway.rate_limit.burst,
            "when_unavailable": gateway.rate_limit.when_unavailable,
        },
        "moderation": {"blocked_terms": list(gateway.moderation.blocked_terms)},
        "knowledge_base": knowledge_base_settings(bot),
        "shutdown": {
            "drain_delay_seconds": DRAIN_DELAY_SECONDS,
            "grace_seconds": gateway.drain_seconds,
        },
    }
    scaling = spec.model.autoscaling
    if scaling is not None:
        config["autoscaling"] = {
            "enabled": True,
            "chatbot": bot.name,
            "namespace": bot.namespace,
            "min_replicas": spec.model.min_replicas(),
            "max_replicas": scaling.max_replicas,
            "target_in_flight": scaling.target_in_flight,
            "scale_down_delay_seconds": scaling.scale_down_delay_seconds,
            "queue_length": scaling.queue_length,
            "queue_timeout_seconds": spec.model.queue_timeout_seconds(),
        }
    return config


def gateway_account(bot: ChatBot) -> str:
    """The gateway's ServiceAccount: its token is mounted only while it autoscales the model."""
    return bot.child(COMPONENT)


def render_gateway_access(bot: ChatBot) -> list[Manifest]:
    """The gateway's ServiceAccount, always there (like the workload one, never pruned), and,
    while it autoscales the model, a Role that lets it read and set its own ChatBot's scale
    and write the autoscaler's part of its status: nothing else."""
    manifests: list[Manifest] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(bot, COMPONENT, gateway_account(bot)),
            "automountServiceAccountToken": False,
        }
    ]
    if bot.spec.model.autoscaling is None:
        return manifests
    name = bot.child("autoscaler")
    rbac = "rbac.authorization.k8s.io"
    manifests += [
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": metadata(bot, COMPONENT, name),
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{PLURAL}/scale"],
                    "resourceNames": [bot.name],
                    "verbs": ["get", "patch"],
                },
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{PLURAL}/status"],
                    "resourceNames": [bot.name],
                    "verbs": ["patch"],
                },
            ],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": metadata(bot, COMPONENT, name),
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": name},
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": gateway_account(bot),
                    "namespace": bot.namespace,
                }
            ],
        },
    ]
    return manifests


def gateway_secrets(bot: ChatBot) -> list[str]:
    """The Secrets the gateway reads: API keys, Weaviate's key, the endpoint's key, the
    keys of the servers the operator runs."""
    names = [api_keys_secret(bot), *memory_secrets(bot)]
    if bot.spec.knowledge_base.enabled:
        names.append(knowledge_base_key(bot)[0])
    if bot.spec.model.api_key_secret_ref is not None:
        names.append(bot.spec.model.api_key_secret_ref.name)
    if needs_server_keys(bot):
        names.append(server_keys_secret(bot))
    return names


def render_gateway(
    bot: ChatBot, *, image: str, secret_versions: dict[str, str] | None = None
) -> list[Manifest]:
    gateway = bot.spec.gateway
    config_text = yaml.safe_dump(gateway_config(bot), sort_keys=True)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(bot, COMPONENT, watched=True),
        "data": {"gateway.yaml": config_text},
    }
    mounts = [
        {"name": "config", "mountPath": CONFIG_PATH, "readOnly": True},
        {"name": "api-keys", "mountPath": KEYS_PATH, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir of its own
    ]
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "configMap": {
                "name": bot.child(COMPONENT),
                "items": [{"key": "gateway.yaml", "path": "gateway.yaml"}],
            },
        },
        {"name": "api-keys", "secret": {"secretName": api_keys_secret(bot)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    ]
    backend_key = backend_key_volume(bot)
    if backend_key is not None:
        volumes.append(backend_key[0])
        mounts.append(backend_key[1])
    password, password_mount, _ = password_volume(bot)
    volumes.append(password)
    mounts.append(password_mount)
    ca = ca_volume(bot)
    if ca is not None:
        volumes.append(ca[0])
        mounts.append(ca[1])
    if bot.spec.knowledge_base.enabled:
        volume, mount = key_volume(bot)
        volumes.append(volume)
        mounts.append(mount)
        embedding_key = embedding_key_volume(bot)
        if embedding_key is not None:
            volumes.append(embedding_key[0])
            mounts.append(embedding_key[1])
    container = {
        "name": COMPONENT,
        "image": gateway.image or image,
        "args": ["gateway", "serve"],
        "env": [{"name": "TERTULIA_GATEWAY_CONFIG_FILE", "value": f"{CONFIG_PATH}/gateway.yaml"}],
        "ports": [
            {"name": "http", "containerPort": PORT},
            # /metrics and /stats, apart from the public port the Ingress exposes.
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "readinessProbe": http_probe("/readyz", "http", periodSeconds=5, timeoutSeconds=3),
        "livenessProbe": http_probe("/healthz", "http", periodSeconds=10, failureThreshold=3),
        "resources": resources(
            gateway.resources,
            {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        ),
        "securityContext": restricted_container_security(),
        "volumeMounts": mounts,
    }
    # A changed config rolls the pods: the checksum is part of their template.
    checksum = hashlib.sha256(config_text.encode()).hexdigest()
    pod = pod_spec(
        bot,
        [container],
        volumes=volumes,
        securityContext={"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        terminationGracePeriodSeconds=DRAIN_DELAY_SECONDS
        + gateway.drain_seconds
        + KILL_MARGIN_SECONDS,
        topologySpreadConstraints=spread(bot, COMPONENT),
        serviceAccountName=gateway_account(bot),
        # An API token only to move the model's scale subresource.
        automountServiceAccountToken=bot.spec.model.autoscaling is not None,
    )
    replicas = gateway.autoscaling.min_replicas if gateway.autoscaling else gateway.replicas
    manifests = [
        *render_gateway_access(bot),
        config_map,
        deployment(
            bot,
            COMPONENT,
            replicas,
            pod,
            annotations={
                "tertulia.dev/config-checksum": checksum,
                **secrets_version(secret_versions, gateway_secrets(bot)),
            },
        ),
        service(bot, COMPONENT, PORT, "http", metrics="metrics"),
    ]
    if replicas > 1 or gateway.autoscaling is not None:
        manifests.append(disruption_budget(bot, COMPONENT))
    if gateway.ingress is not None:
        manifests.append(_ingress(bot))
    if gateway.autoscaling is not None:
        manifests.append(_autoscaler(bot))
    return manifests


# Where slack_bolt serves the Events API.
SLACK_EVENTS_PATH = "/slack/events"


def webhook_routes(bot: ChatBot) -> list[tuple[str, str, str]]:
    """The platforms' webhook endpoints the Ingress sends to the bots: (host, path, Service).
    An empty host is the Ingress's own."""
    platforms = bot.spec.platforms
    routes = []
    if platforms.slack is not None and platforms.slack.mode == "events":
        routes.append(("", SLACK_EVENTS_PATH, bot.child("slack")))
    telegram = platforms.telegram
    if telegram is not None and telegram.mode == "webhook" and telegram.webhook_url:
        url = urlsplit(telegram.webhook_url)
        routes.append((url.hostname or "", url.path or "/", bot.child("telegram")))
    return routes


def _path(path: str, path_type: str, service: str, port: str) -> dict[str, Any]:
    return {
        "path": path,
        "pathType": path_type,
        "backend": {"service": {"name": service, "port": {"name": port}}},
    }


def _ingress(bot: ChatBot) -> Manifest:
    """The gateway at /, and each webhook path at its bot: the Slack app's Request URL and
    Telegram's webhookUrl reach the bots through it."""
    ingress = bot.spec.gateway.ingress
    assert ingress is not None  # noqa: S101 - callers check
    paths: dict[str, list[dict[str, Any]]] = {ingress.host: []}
    for host, path, bot_service in webhook_routes(bot):
        route = _path(path, "Exact", bot_service, "http")
        paths.setdefault(host or ingress.host, []).append(route)
    paths[ingress.host].append(_path("/", "Prefix", bot.child(COMPONENT), "http"))
    spec: dict[str, Any] = {
        "rules": [{"host": host, "http": {"paths": found}} for host, found in paths.items()]
    }
    if ingress.class_name:
        spec["ingressClassName"] = ingress.class_name
    if ingress.tls_secret_name:
        spec["tls"] = [{"hosts": [ingress.host], "secretName": ingress.tls_secret_name}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata(bot, COMPONENT),
        "spec": spec,
    }


def _autoscaler(bot: ChatBot) -> Manifest:
    autoscaling = bot.spec.gateway.autoscaling
    assert autoscaling is not None  # noqa: S101 - callers check
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(bot, COMPONENT),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": bot.child(COMPONENT),
            },
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": autoscaling.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }
