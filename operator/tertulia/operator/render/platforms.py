"""One bot Deployment per configured platform; tokens reach it as files from its Secrets."""

from __future__ import annotations

from typing import Any

from tertulia.operator.api import ChatBot, SecretKeyRef, SlackSpec, TelegramSpec
from tertulia.operator.render.common import (
    Manifest,
    deployment,
    pod_spec,
    resources,
    restricted_container_security,
    secrets_version,
    service,
)
from tertulia.operator.render.gateway import api_keys_secret, gateway_url

SECRETS_PATH = "/etc/tertulia/secrets"
# The file of the bot's own API key for the gateway, beside its platform tokens.
GATEWAY_KEY_FILE = "gateway-key"
HEALTH_PORT = 8081
WEBHOOK_PORT = 8443


def secret_refs(bot: ChatBot) -> dict[str, dict[str, SecretKeyRef]]:
    """The Secret keys each configured platform needs, by platform and by file name: its
    tokens, and its own API key for the gateway, named after the platform."""
    needed: dict[str, dict[str, SecretKeyRef]] = {}
    for name, spec in bot.spec.platforms.configured().items():
        refs: dict[str, SecretKeyRef | None] = {}
        if isinstance(spec, SlackSpec):
            refs = {
                "bot-token": spec.bot_token_secret_ref,
                "app-token": spec.app_token_secret_ref,
                "signing-secret": spec.signing_secret_ref,
            }
        elif isinstance(spec, TelegramSpec):
            refs = {"token": spec.token_secret_ref, "webhook-secret": spec.webhook_secret_ref}
        else:
            refs = {"token": spec.token_secret_ref}
        refs[GATEWAY_KEY_FILE] = SecretKeyRef(name=api_keys_secret(bot), key=name)
        needed[name] = {file: ref for file, ref in refs.items() if ref is not None}
    return needed


def receives_http(spec: object) -> bool:
    """Whether the platform calls the bot (Slack's events mode, Telegram's webhooks) rather
    than the bot calling out (Socket Mode, long polling, Discord's gateway)."""
    return getattr(spec, "mode", None) in ("events", "webhook")


def render_platforms(
    bot: ChatBot,
    *,
    image: str,
    only: set[str] | None = None,
    secret_versions: dict[str, str] | None = None,
) -> list[Manifest]:
    """A bot per platform; `only` leaves out those whose Secrets are missing, and a change of
    `secret_versions` (a rotated token) rolls the bots that read the changed Secret."""
    manifests: list[Manifest] = []
    for platform, refs in secret_refs(bot).items():
        if only is not None and platform not in only:
            continue
        manifests.extend(_platform(bot, platform, refs, image, secret_versions))
    return manifests


def _platform(
    bot: ChatBot,
    platform: str,
    refs: dict[str, SecretKeyRef],
    image: str,
    secret_versions: dict[str, str] | None,
) -> list[Manifest]:
    spec = bot.spec.platforms.configured()[platform]
    volumes: list[dict[str, Any]] = [
        {
            "name": f"secret-{file}",
            "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": file}]},
        }
        for file, ref in refs.items()
    ]
    mounts: list[dict[str, Any]] = [
        {
            "name": f"secret-{file}",
            "mountPath": f"{SECRETS_PATH}/{file}",
            "subPath": file,
            "readOnly": True,
        }
        for file in refs
    ]
    env = [
        {"name": "TERTULIA_BOT_GATEWAY_URL", "value": gateway_url(bot)},
        {"name": "TERTULIA_BOT_GATEWAY_KEY_FILE", "value": f"{SECRETS_PATH}/{GATEWAY_KEY_FILE}"},
        {"name": "TERTULIA_BOT_SECRETS_DIR", "value": SECRETS_PATH},
        {"name": "TERTULIA_BOT_HEALTH_PORT", "value": str(HEALTH_PORT)},
    ]
    ports = [{"name": "health", "containerPort": HEALTH_PORT}]
    mode = getattr(spec, "mode", None)
    if mode:
        env.append({"name": "TERTULIA_BOT_MODE", "value": mode})
    webhook = receives_http(spec)
    if webhook:
        ports.append({"name": "webhook", "containerPort": WEBHOOK_PORT})
        env.append({"name": "TERTULIA_BOT_WEBHOOK_PORT", "value": str(WEBHOOK_PORT)})
    if isinstance(spec, TelegramSpec) and spec.webhook_url:
        env.append({"name": "TERTULIA_BOT_WEBHOOK_URL", "value": spec.webhook_url})
    api_url = getattr(spec, "api_url", None)
    if api_url:
        env.append({"name": "TERTULIA_BOT_API_URL", "value": api_url})
    container = {
        "name": platform,
        "image": image,
        "args": ["bot", platform],
        "env": env,
        "ports": ports,
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 10},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 15},
        "resources": resources(
            spec.resources,
            {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        ),
        "securityContext": restricted_container_security(),
        "volumeMounts": mounts,
    }
    pod = pod_spec(
        bot,
        [container],
        volumes=volumes,
        securityContext={"runAsNonRoot": True, "runAsUser": 10001},
    )
    # Two replicas of a polling or socket bot would answer every message twice.
    read = [ref.name for ref in refs.values()]
    manifests = [
        deployment(
            bot,
            platform,
            1,
            pod,
            strategy={"type": "Recreate"},
            annotations=secrets_version(secret_versions, read),
        )
    ]
    if webhook:
        manifests.append(service(bot, platform, WEBHOOK_PORT, "webhook"))
    return manifests
