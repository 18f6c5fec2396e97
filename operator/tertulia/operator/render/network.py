"""Isolation: a NetworkPolicy for every component. Only the gateway reaches the model, memory
and knowledge base (and the ingest Job the embeddings server and the knowledge base); the
bots reach the gateway alone, and nothing reaches a bot but the platform's webhook calls; the
gateway's API is open to its bots, the ingress controllers the chart names and the clients
the spec names, its metrics port to the scrapers alone. With the installation's egress set
to restricted, each component may also open only what it needs (DNS, its own dependencies,
the internet where it fetches weights or talks to a platform). Workloads run under a
ServiceAccount without an API token."""

from __future__ import annotations

from typing import Any

from tertulia.operator.api import ChatBot
from tertulia.operator.render.common import (
    Installation,
    Manifest,
    metadata,
    selector_labels,
)
from tertulia.operator.render.embeddings import COMPONENT as EMBEDDINGS
from tertulia.operator.render.embeddings import runs_embeddings_server
from tertulia.operator.render.gateway import COMPONENT as GATEWAY
from tertulia.operator.render.gateway import PORT as GATEWAY_PORT
from tertulia.operator.render.knowledge import BACKUP, INGEST
from tertulia.operator.render.knowledge import COMPONENT as KNOWLEDGE
from tertulia.operator.render.memory import COMPONENT as MEMORY
from tertulia.operator.render.memory import high_availability
from tertulia.operator.render.model import COMPONENT as MODEL
from tertulia.operator.render.platforms import HEALTH_PORT, WEBHOOK_PORT, receives_http

# Who may connect to each component. The bots face the platforms (and the internet, in
# events and webhook mode): they reach the gateway alone, which claims their events for them.
_CLIENTS = {
    MODEL: [GATEWAY],
    MEMORY: [GATEWAY],
    KNOWLEDGE: [GATEWAY, INGEST, BACKUP],
    EMBEDDINGS: [GATEWAY, INGEST],
}


# Those that serve /metrics on their `http` port (Ollama serves none; Redis none).
_SERVES_METRICS = {MODEL, EMBEDDINGS}
# DNS, from every pod that opens anything: the cluster's resolver, wherever it runs.
_DNS: dict[str, Any] = {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
# The internet without the private ranges a cluster's pods and Services live in: where
# weights are fetched (the Hugging Face hub, Ollama's registry) and platforms are called.
_INTERNET = {
    "ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}
}


def render_service_account(bot: ChatBot) -> list[Manifest]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(bot, "workload"),
            "automountServiceAccountToken": False,
        }
    ]


def _pods(bot: ChatBot, *components: str) -> list[dict[str, Any]]:
    return [{"podSelector": {"matchLabels": selector_labels(bot, c)}} for c in components]


def _policy(
    bot: ChatBot,
    component: str,
    direction: str,
    rules: list[dict[str, Any]],
) -> Manifest:
    """A policy over `component`'s pods: only `rules` let traffic in (or out); none, none.
    No rules is no list at all: the API server drops an empty one, so every apply of
    `ingress: []` changed the stored object (a new resourceVersion, an event, and the
    operator putting it back: a loop of applies, many a second)."""
    kind = "ingress" if direction == "Ingress" else "egress"
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": selector_labels(bot, component)},
        "policyTypes": [direction],
    }
    if rules:
        spec[kind] = rules
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(bot, component, bot.child(f"{component}-{kind}")),
        "spec": spec,
    }


def _stores(bot: ChatBot) -> list[str]:
    """The components the operator runs beside the gateway, each behind its own policy."""
    found = []
    if bot.spec.model.engine != "endpoint":
        found.append(MODEL)
    if bot.spec.gateway.memory.external is None:
        found.append(MEMORY)
    knowledge = bot.spec.knowledge_base
    if knowledge.enabled and knowledge.external is None:
        found.append(KNOWLEDGE)
    if runs_embeddings_server(bot):
        found.append(EMBEDDINGS)
    return found


def render_network_policies(
    bot: ChatBot, installation: Installation | None = None
) -> list[Manifest]:
    installation = installation or Installation()
    scrapers = installation.scrapers
    policies = []
    for component in _stores(bot):
        clients = list(_CLIENTS[component])
        if bot.spec.knowledge_base.backup is None:
            clients = [client for client in clients if client != BACKUP]
        if component == KNOWLEDGE and bot.spec.knowledge_base.replicas > 1:
            clients.append(KNOWLEDGE)  # Weaviate's nodes reach each other
        if component == MEMORY and high_availability(bot):
            clients.append(MEMORY)  # replicas reach the primary, Sentinels each other
        rules: list[dict[str, Any]] = [{"from": _pods(bot, *clients)}]
        ollama = component == MODEL and bot.spec.model.engine == "ollama"
        if scrapers and component in _SERVES_METRICS and not ollama:
            rules.append({"from": [scrapers], "ports": [{"port": "http", "protocol": "TCP"}]})
        policies.append(_policy(bot, component, "Ingress", rules))
    policies.append(_gateway_ingress(bot, installation))
    policies += _bots_ingress(bot, scrapers)
    if installation.egress == "restricted":
        policies += render_egress_policies(bot)
    return policies


def _gateway_ingress(bot: ChatBot, installation: Installation) -> Manifest:
    """The API port from the bots, the ingress controllers and the spec's clients; the
    metrics port from the scrapers alone."""
    platforms = list(bot.spec.platforms.configured())
    clients = [
        *_pods(bot, *platforms),
        *installation.gateway_clients,
        *bot.spec.gateway.allowed_clients,
    ]
    api = {"ports": [{"port": "http", "protocol": "TCP"}]}
    rules: list[dict[str, Any]] = [{"from": clients, **api}] if clients else []
    if installation.scrapers:
        metrics = {"port": "metrics", "protocol": "TCP"}
        rules.append({"from": [installation.scrapers], "ports": [metrics]})
    return _policy(bot, GATEWAY, "Ingress", rules)


def _bots_ingress(bot: ChatBot, scrapers: dict[str, Any] | None) -> list[Manifest]:
    """Nothing reaches a bot but what the platform sends to its webhook (events and webhook
    modes), and the scrapers its health port, which serves its metrics."""
    policies = []
    for platform, spec in bot.spec.platforms.configured().items():
        rules: list[dict[str, Any]] = []
        if receives_http(spec):
            rules.append({"ports": [{"port": WEBHOOK_PORT, "protocol": "TCP"}]})
        if scrapers:
            rules.append({"from": [scrapers], "ports": [{"port": HEALTH_PORT, "protocol": "TCP"}]})
        policies.append(_policy(bot, platform, "Ingress", rules))
    return policies


def _to(bot: ChatBot, *components: str) -> dict[str, Any]:
    return {"to": _pods(bot, *components)}


def render_egress_policies(bot: ChatBot) -> list[Manifest]:
    """What each component may open, once a cluster admin restricts egress (the chart's
    `networkPolicy.egress: restricted`): DNS, its own dependencies, and the internet only
    where it must go there. Services outside the cluster named by the spec (an endpoint, an
    external Redis or Weaviate, a backup bucket) are reached on the ports their URLs name."""
    spec = bot.spec
    stores = _stores(bot)
    platforms = list(spec.platforms.configured())
    gateway: list[dict[str, Any]] = [_DNS]
    if stores:
        gateway.append(_to(bot, *stores))
    external = [
        url
        for url in (
            spec.model.endpoint,
            spec.gateway.memory.external.url if spec.gateway.memory.external else None,
            spec.knowledge_base.external.url if spec.knowledge_base.external else None,
            spec.knowledge_base.embedding.endpoint if spec.knowledge_base.enabled else None,
        )
        if url
    ]
    if external:
        gateway.append({"ports": _ports_of(external)})
    if spec.model.autoscaling is not None:
        # The Kubernetes API, for the model's scale subresource: its Service's port, and
        # the API server's own (the address a Service forwards to depends on the cluster).
        gateway.append({"ports": [{"port": 443}, {"port": 6443}]})
    policies = [_policy(bot, GATEWAY, "Egress", gateway)]
    for platform in platforms:
        rules = [_DNS, {**_to(bot, GATEWAY), "ports": [{"port": GATEWAY_PORT}]}]
        rules.append({"to": [_INTERNET], "ports": [{"port": 443, "protocol": "TCP"}]})
        policies.append(_policy(bot, platform, "Egress", rules))
    if MODEL in stores:
        # Weights from the hub or Ollama's registry, by HTTPS.
        rules = [_DNS, {"to": [_INTERNET], "ports": [{"port": 443}]}]
        policies.append(_policy(bot, MODEL, "Egress", rules))
    if EMBEDDINGS in stores:
        rules = [_DNS, {"to": [_INTERNET], "ports": [{"port": 443}]}]
        policies.append(_policy(bot, EMBEDDINGS, "Egress", rules))
    if MEMORY in stores:
        rules = [_DNS]
        if high_availability(bot):
            rules.append(_to(bot, MEMORY))
        policies.append(_policy(bot, MEMORY, "Egress", rules))
    if KNOWLEDGE in stores:
        rules = [_DNS]
        if spec.knowledge_base.replicas > 1:
            rules.append(_to(bot, KNOWLEDGE))
        if spec.knowledge_base.backup is not None:
            # The bucket: S3 over HTTPS, or an in-house endpoint's usual ports.
            rules.append({"ports": [{"port": 443}, {"port": 80}, {"port": 9000}]})
        policies.append(_policy(bot, KNOWLEDGE, "Egress", rules))
    if spec.knowledge_base.enabled:
        targets = [c for c in (KNOWLEDGE, EMBEDDINGS) if c in stores]
        rules = [_DNS, *([_to(bot, *targets)] if targets else [])]
        if external:
            rules.append({"ports": _ports_of(external)})
        policies.append(_policy(bot, INGEST, "Egress", rules))
    return policies


def _ports_of(urls: list[str]) -> list[dict[str, Any]]:
    """The TCP ports that URLs name (their scheme's default when they name none)."""
    from urllib.parse import urlsplit

    ports = set()
    for url in urls:
        parts = urlsplit(url)
        default = {"https": 443, "rediss": 6380, "redis": 6379}.get(parts.scheme, 80)
        ports.add(parts.port or default)
    return [{"port": port, "protocol": "TCP"} for port in sorted(ports)]
