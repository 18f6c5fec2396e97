"""What every rendered object shares: names, labels, owner reference, pod hardening."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from tertulia.operator.api import GROUP, KIND, VERSION, ChatBot

Manifest = dict[str, Any]

MANAGED_BY = "tertulia-operator"
PART_OF = "tertulia"
# On Services that serve Prometheus metrics at /metrics on their `metrics` port.
METRICS_LABEL = "tertulia.dev/metrics"
# The Service port Prometheus scrapes, whichever container port serves /metrics.
METRICS_PORT = 9090
# On the Secrets and ConfigMaps the operator must hear about: those it makes, and those a
# ChatBot names (labelled when first read). Its watches of those kinds select by it.
WATCH_LABEL = "tertulia.dev/watched"
# On pod templates: a digest of the versions of the Secrets the pods read at start.
SECRETS_ANNOTATION = "tertulia.dev/secrets-version"


def selector_labels(bot: ChatBot, component: str) -> dict[str, str]:
    """The labels selectors use: name, instance and component only, so they never change."""
    return {
        "app.kubernetes.io/name": PART_OF,
        "app.kubernetes.io/instance": bot.name,
        "app.kubernetes.io/component": component,
    }


def labels(bot: ChatBot, component: str) -> dict[str, str]:
    return {**selector_labels(bot, component), "app.kubernetes.io/managed-by": MANAGED_BY}


def metadata(
    bot: ChatBot, component: str, name: str | None = None, *, watched: bool = False
) -> dict[str, Any]:
    """A child's name, labels and owner; `watched` for a Secret or ConfigMap, which the
    operator's watches of those kinds select by WATCH_LABEL."""
    found = labels(bot, component)
    if watched:
        found[WATCH_LABEL] = "true"
    return {
        "name": name or bot.child(component),
        "namespace": bot.namespace,
        "labels": found,
        "ownerReferences": [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": bot.name,
                "uid": bot.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def restricted_container_security() -> dict[str, Any]:
    """The Pod Security 'restricted' profile for one container."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_spec(bot: ChatBot, containers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A Pod of the ChatBot: no API token, the ChatBot's pull Secrets and PriorityClass."""
    spec: dict[str, Any] = {
        "serviceAccountName": bot.child("workload"),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": containers,
    }
    if bot.spec.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": ref.name} for ref in bot.spec.image_pull_secrets]
    if bot.spec.priority_class_name:
        spec["priorityClassName"] = bot.spec.priority_class_name
    return {**spec, **extra}


def secrets_version(versions: dict[str, str] | None, names: Iterable[str]) -> dict[str, str]:
    """A pod annotation that changes with any Secret of `names` (a rotated token, a deleted
    and regenerated key), so the pods that read them at start roll; none without versions."""
    if versions is None:
        return {}
    seen = {name: versions.get(name, "") for name in sorted(set(names))}
    digest = hashlib.sha256(json.dumps(seen).encode()).hexdigest()[:16]
    return {SECRETS_ANNOTATION: digest}


def cpu_threads(resources: dict[str, Any]) -> int:
    """The threads a CPU-bound server (llama.cpp) should take: the cores its container may
    use (its CPU limit, else its request), rounded up, at least one. llama.cpp's default is
    every core of the node, and its threads spin while they wait for each other: on a shared
    node, or under a CPU limit, that is many times slower (docs/operator.md, "Threads")."""
    cores = _limit_or_request(resources, "cpu")
    return 1 if cores is None else max(1, math.ceil(cores))


def memory_mib(resources: dict[str, Any]) -> int | None:
    """The memory a container may use, in MiB: its limit, else its request; None if neither."""
    size = _limit_or_request(resources, "memory")
    return None if size is None else int(size // (1024 * 1024))


def _limit_or_request(resources: dict[str, Any], name: str) -> Decimal | None:
    """A container's limit of the resource `name`, else its request, as a number."""
    for section in ("limits", "requests"):
        amount = (resources.get(section) or {}).get(name)
        if amount is not None:
            value: Decimal = parse_quantity(str(amount))  # type: ignore[no-untyped-call]
            return value
    return None


def resources(override: dict[str, Any] | None, default: dict[str, Any]) -> dict[str, Any]:
    """A container's requests and limits: the spec's when given (whole), else `default`."""
    return dict(override) if override else default


def deployment(
    bot: ChatBot,
    component: str,
    replicas: int,
    pod: dict[str, Any],
    *,
    annotations: dict[str, str] | None = None,
    strategy: dict[str, Any] | None = None,
) -> Manifest:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": selector_labels(bot, component)},
        "template": _pod_template(bot, component, pod, annotations),
    }
    if strategy:
        spec["strategy"] = strategy
    return _workload(bot, "Deployment", component, spec)


def stateful_set(
    bot: ChatBot,
    component: str,
    pod: dict[str, Any],
    *,
    annotations: dict[str, str] | None = None,
    claims: list[dict[str, Any]] | None = None,
) -> Manifest:
    """One replica that keeps its identity and, with `claims` (claim templates), volumes of
    its own: the ChatBot's data, which goes with it or outlives it as `retainDataOnDelete`
    says (a claim of a replica scaled away is kept either way, for when it comes back)."""
    spec: dict[str, Any] = {
        "serviceName": bot.child(component),
        "replicas": 1,
        "selector": {"matchLabels": selector_labels(bot, component)},
        "template": _pod_template(bot, component, pod, annotations),
    }
    if claims:
        spec["volumeClaimTemplates"] = claims
        spec["persistentVolumeClaimRetentionPolicy"] = {
            "whenDeleted": "Retain" if bot.spec.retain_data_on_delete else "Delete",
            "whenScaled": "Retain",
        }
    return _workload(bot, "StatefulSet", component, spec)


def disruption_budget(bot: ChatBot, component: str) -> Manifest:
    """A PodDisruptionBudget for a component of several replicas: a node drain or an
    eviction takes one of them at a time, never all. A pod that is not Ready may always be
    evicted, so a broken one cannot hold a drain up."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(bot, component),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(bot, component)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def spread(
    bot: ChatBot, component: str, *, revision_label: str | None = "pod-template-hash"
) -> list[dict[str, Any]]:
    """Topology spread constraints: a component's replicas on different zones and nodes
    where the cluster has them, on any node where it has not (a preference, not a rule).
    Counted per revision (`revision_label`, a Deployment's), so a rolling update spreads its
    new pods too; a StatefulSet replaces its pods one by one, and counts them all (None)."""
    constraints: list[dict[str, Any]] = [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(bot, component)},
        }
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]
    if revision_label:
        for constraint in constraints:
            constraint["matchLabelKeys"] = [revision_label]
    return constraints


def claim_spec(
    size: str, storage_class_name: str | None, access_mode: str = "ReadWriteOnce"
) -> dict[str, Any]:
    """A PersistentVolumeClaim's spec: `size` in the class given, or the cluster's default."""
    claim: dict[str, Any] = {
        "accessModes": [access_mode],
        "resources": {"requests": {"storage": size}},
    }
    if storage_class_name:
        claim["storageClassName"] = storage_class_name
    return claim


def _pod_template(
    bot: ChatBot, component: str, pod: dict[str, Any], annotations: dict[str, str] | None
) -> dict[str, Any]:
    template_metadata: dict[str, Any] = {"labels": labels(bot, component)}
    if annotations:
        template_metadata["annotations"] = annotations
    return {"metadata": template_metadata, "spec": pod}


def _workload(bot: ChatBot, kind: str, component: str, spec: dict[str, Any]) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": metadata(bot, component),
        "spec": spec,
    }


def service(
    bot: ChatBot,
    component: str,
    port: int,
    target_port: int | str | None = None,
    *,
    metrics: int | str | None = None,
) -> Manifest:
    """A ClusterIP Service. `metrics`, the container port that serves /metrics, adds the
    port `metrics` (METRICS_PORT) and the label the chart's ServiceMonitor selects by."""
    meta = metadata(bot, component)
    ports = [{"name": "http", "port": port, "targetPort": target_port or port, "protocol": "TCP"}]
    if metrics is not None:
        meta["labels"][METRICS_LABEL] = "prometheus"
        ports.append(
            {"name": "metrics", "port": METRICS_PORT, "targetPort": metrics, "protocol": "TCP"}
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"selector": selector_labels(bot, component), "ports": ports},
    }


def headless_service(
    bot: ChatBot,
    component: str,
    name: str,
    ports: list[dict[str, Any]],
    *,
    not_ready: bool = True,
) -> Manifest:
    """A headless Service: its DNS name lists the component's pods. With `not_ready`, it
    names each pod of a StatefulSet before it is ready too (its pods find each other through
    it to become ready at all); without, it lists the ready pods alone."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(bot, component, name),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": not_ready,
            "selector": selector_labels(bot, component),
            "ports": ports,
        },
    }


def http_probe(path: str, port: int | str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, **timing}


@dataclass(frozen=True)
class Installation:
    """What the operator's installation adds to every render: the registry its third-party
    images are mirrored in (empty: their upstream names), who may scrape the metrics of
    components behind a NetworkPolicy (a core/v1 NetworkPolicyPeer; none when None), who
    else may call every gateway's API (the ingress controllers: NetworkPolicyPeers),
    whether egress is restricted too (`restricted`) or left open (`open`), and whether the
    third-party images keep their digests (off for a mirror that re-pushes them, whose
    digests differ, and for a test bed's stand-ins)."""

    registry: str = ""
    scrapers: dict[str, Any] | None = None
    gateway_clients: list[dict[str, Any]] = field(default_factory=list)
    egress: str = "open"
    digests: bool = True
