"""Isolation: only the gateway reaches the model, memory and knowledge base (and the ingest
Job the embeddings server and the knowledge base); the bots reach the gateway alone.
Workloads run under a ServiceAccount without an API token."""

from __future__ import annotations

from typing import Any

from tertulia.operator.api import ChatBot
from tertulia.operator.render.common import Manifest, metadata, selector_labels
from tertulia.operator.render.embeddings import COMPONENT as EMBEDDINGS
from tertulia.operator.render.embeddings import runs_embeddings_server
from tertulia.operator.render.knowledge import BACKUP, INGEST
from tertulia.operator.render.knowledge import COMPONENT as KNOWLEDGE
from tertulia.operator.render.memory import COMPONENT as MEMORY
from tertulia.operator.render.memory import high_availability
from tertulia.operator.render.model import COMPONENT as MODEL

# Who may connect to each component. The bots face the platforms (and the internet, in
# events and webhook mode): they reach the gateway alone, which claims their events for them.
_CLIENTS = {
    MODEL: ["gateway"],
    MEMORY: ["gateway"],
    KNOWLEDGE: ["gateway", INGEST, BACKUP],
    EMBEDDINGS: ["gateway", INGEST],
}


# Those that serve /metrics on their `http` port (Ollama serves none; Redis none).
_SERVES_METRICS = {MODEL, EMBEDDINGS}


def render_service_account(bot: ChatBot) -> list[Manifest]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(bot, "workload"),
            "automountServiceAccountToken": False,
        }
    ]


def render_network_policies(
    bot: ChatBot, *, scrapers: dict[str, Any] | None = None
) -> list[Manifest]:
    """One policy per component that only its clients may reach; `scrapers` (a
    NetworkPolicyPeer, such as the monitoring namespace) may also reach the components that
    serve Prometheus metrics, on their `http` port."""
    policies = []
    for component, clients in _CLIENTS.items():
        if component == MODEL and bot.spec.model.engine == "endpoint":
            continue
        if component == KNOWLEDGE and (
            not bot.spec.knowledge_base.enabled or bot.spec.knowledge_base.external is not None
        ):
            continue
        if component == EMBEDDINGS and not runs_embeddings_server(bot):
            continue
        if component == MEMORY and bot.spec.gateway.memory.external is not None:
            continue
        if bot.spec.knowledge_base.backup is None:
            clients = [client for client in clients if client != BACKUP]
        if component == KNOWLEDGE and bot.spec.knowledge_base.replicas > 1:
            clients = [*clients, KNOWLEDGE]  # Weaviate's nodes reach each other
        if component == MEMORY and high_availability(bot):
            clients = [*clients, MEMORY]  # replicas reach the primary, Sentinels each other
        sources = [
            {"podSelector": {"matchLabels": selector_labels(bot, client)}} for client in clients
        ]
        rules: list[dict[str, Any]] = [{"from": sources}]
        ollama = component == MODEL and bot.spec.model.engine == "ollama"
        if scrapers and component in _SERVES_METRICS and not ollama:
            rules.append({"from": [scrapers], "ports": [{"port": "http", "protocol": "TCP"}]})
        policies.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": metadata(bot, component, bot.child(f"{component}-ingress")),
                "spec": {
                    "podSelector": {"matchLabels": selector_labels(bot, component)},
                    "policyTypes": ["Ingress"],
                    "ingress": rules,
                },
            }
        )
    return policies
