"""The bots' Prometheus metrics, labelled by platform; one registry per process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class BotMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.received = Counter(
            "tertulia_bot_messages_received",
            "Messages addressed to the bot (mentions and direct messages).",
            ["platform"],
            registry=self.registry,
        )
        self.sent = Counter(
            "tertulia_bot_messages_sent",
            "Messages the bot sent, counting each piece of a split answer.",
            ["platform"],
            registry=self.registry,
        )
        self.errors = Counter(
            "tertulia_bot_errors",
            "Messages that got an error reply, by error.",
            ["platform", "error"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tertulia_bot_reply_seconds",
            "From receiving a message to the last piece of its answer.",
            ["platform"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
            registry=self.registry,
        )
