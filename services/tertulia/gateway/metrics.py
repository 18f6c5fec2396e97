"""Prometheus metrics of the gateway, in a registry of the app's own; /stats reads the same."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(frozen=True)
class GatewayMetrics:
    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    first_token_seconds: Histogram
    tokens: Counter
    backend_errors: Counter
    rate_limited: Counter
    moderated: Counter
    degraded: Counter
    backend_replicas: Gauge
    backend_in_flight: Gauge
    routed: Counter
    queued: Gauge
    queue_wait_seconds: Histogram
    load: Gauge
    desired_replicas: Gauge
    scale_events: Counter

    @classmethod
    def create(cls) -> GatewayMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "tertulia_gateway_requests",
                "Requests answered, by route template and HTTP status.",
                ["route", "status"],
                registry=registry,
            ),
            request_seconds=Histogram(
                "tertulia_gateway_request_duration_seconds",
                "Time from request to the end of the response, streams included.",
                ["route"],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            first_token_seconds=Histogram(
                "tertulia_gateway_time_to_first_token_seconds",
                "Time from request to the first token of the answer.",
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            tokens=Counter(
                "tertulia_gateway_tokens",
                "Tokens sent to (prompt) and received from (completion) the model server.",
                ["direction"],
                registry=registry,
            ),
            backend_errors=Counter(
                "tertulia_gateway_backend_errors",
                "Failed calls to the model server, by kind.",
                ["kind"],
                registry=registry,
            ),
            degraded=Counter(
                "tertulia_gateway_degraded",
                "Requests answered without a feature whose store (Redis) could not be reached: "
                "memory or rate_limit.",
                ["feature"],
                registry=registry,
            ),
            rate_limited=Counter(
                "tertulia_gateway_rate_limited",
                "Requests refused by a rate limit, by the limit's scope (user or key).",
                ["scope"],
                registry=registry,
            ),
            moderated=Counter(
                "tertulia_gateway_moderated",
                "Texts blocked by moderation, by direction: input (a request refused), output "
                "(an answer replaced) or passage (a retrieved passage left out of the prompt).",
                ["direction"],
                registry=registry,
            ),
            backend_replicas=Gauge(
                "tertulia_gateway_backend_replicas",
                "Ready model server replicas the gateway routes to (0: through the Service).",
                registry=registry,
            ),
            backend_in_flight=Gauge(
                "tertulia_gateway_backend_in_flight",
                "Requests in flight to each model server replica (its address), or to the "
                "model's Service while no replica is known, streams until their last token.",
                ["replica"],
                registry=registry,
            ),
            routed=Counter(
                "tertulia_gateway_routed",
                "Requests sent to the model, by how their replica was chosen: affinity (the "
                "conversation's own), neighbour (its own was over its share, or unreachable), "
                "round_robin (no conversation, or routing round-robin) or service (no replica "
                "known: through the Service).",
                ["outcome"],
                registry=registry,
            ),
            queued=Gauge(
                "tertulia_gateway_queued_requests",
                "Requests this gateway holds while no model replica is ready (scaling from zero).",
                registry=registry,
            ),
            queue_wait_seconds=Histogram(
                "tertulia_gateway_queue_wait_seconds",
                "How long held requests waited for a model replica, by outcome: served "
                "(a replica came), timeout or full (answered 503).",
                ["outcome"],
                buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
                registry=registry,
            ),
            load=Gauge(
                "tertulia_gateway_autoscaler_load",
                "Requests in flight to the model or waiting for it, across every gateway "
                "replica, as the autoscaler last counted them.",
                registry=registry,
            ),
            desired_replicas=Gauge(
                "tertulia_gateway_autoscaler_desired_replicas",
                "The model replicas the autoscaler last asked for (set by the gateway that "
                "leads the autoscaling).",
                registry=registry,
            ),
            scale_events=Counter(
                "tertulia_gateway_scale_events",
                "Changes the autoscaler made to the model's replicas, by direction: up, down, "
                "wake (from zero, for a held request).",
                ["direction"],
                registry=registry,
            ),
        )

    def stats(self) -> dict[str, float | int]:
        """Totals for /stats: requests, errors, success rate and mean latency."""
        requests = errors = 0
        for metric in self.requests.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                requests += int(sample.value)
                if int(sample.labels["status"]) >= 500:
                    errors += int(sample.value)
        seconds = count = 0.0
        for metric in self.request_seconds.collect():
            for sample in metric.samples:
                if sample.name.endswith("_sum"):
                    seconds += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
        return {
            "requests": requests,
            "errors": errors,
            "success_rate": (requests - errors) / requests if requests else 1.0,
            "mean_latency_seconds": seconds / count if count else 0.0,
        }
