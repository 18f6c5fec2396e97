"""The operator's calls to the Kubernetes API: server-side apply under one field manager,
deletes, owned-object listing, Secret checks and status patches."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from typing import Any, cast
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tertulia.common.logging import redact
from tertulia.operator.api import GROUP, PLURAL, VERSION, ChatBot
from tertulia.operator.plan import Manifest, ObjectRef
from tertulia.operator.render.common import MANAGED_BY, WATCH_LABEL

logger = logging.getLogger(__name__)

FIELD_MANAGER = "tertulia-operator"
# Every kind the renders produce, with its REST collection: what is applied by path and
# listed to find objects to delete. A fixed table rather than API discovery, which would
# hold the whole cluster's API surface in memory.
OWNED_KINDS: dict[tuple[str, str], str] = {
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("apps/v1", "Deployment"): "deployments",
    ("apps/v1", "StatefulSet"): "statefulsets",
    ("batch/v1", "Job"): "jobs",
    ("batch/v1", "CronJob"): "cronjobs",
    ("networking.k8s.io/v1", "Ingress"): "ingresses",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
}
# The kinds looked through for objects the spec dropped. Every ChatBot has exactly one
# ServiceAccount and one ConfigMap, whatever its spec, so neither is ever dropped (and the
# operator is not granted their deletion).
PRUNED_KINDS = [key for key in OWNED_KINDS if key[1] not in ("ServiceAccount", "ConfigMap")]
# The digest of a ConfigMap that does not exist.
MISSING = "missing"
# Lines of a failed Pod's message carried into a condition.
MESSAGE_LINES = 4
# Objects per page when a whole collection is listed.
PAGE_SIZE = 500
# The generated API key Secret is created once and never pruned: it goes with its ChatBot.
COLLECTIONS = {**OWNED_KINDS, ("v1", "Secret"): "secrets"}


def api_path(root: str, *segments: str) -> str:
    """An API path: `root` (the operator's own constant) and each segment quoted, so no name
    from a spec, however it is spelt, can reach another path (`..`, `/`, `?`)."""
    return "/".join([root, *(quote(segment, safe="") for segment in segments)])


def group_root(api_version: str) -> str:
    return f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    collection = COLLECTIONS[api_version, kind]
    return api_path(group_root(api_version), "namespaces", namespace, collection)


CHATBOTS_ROOT = f"/apis/{GROUP}/{VERSION}"


def _status_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(error.reason)


@functools.cache
def api_client() -> client.ApiClient:
    """In a pod, its ServiceAccount; elsewhere, the current kubeconfig context."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Cluster:
    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api or api_client()

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Manifest | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One REST call by path, answered as plain JSON; ApiException on an error status."""
        request = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request)
        response.read()
        try:
            answer = self.api.response_deserialize(response, {"2XX": "object"}).data
        except ApiException as error:
            # Only the Status message goes on: the full body and headers of a refused write
            # could carry what was sent, a generated key included, into the logs.
            raise ApiException(status=error.status, reason=_status_message(error)) from None
        return cast(dict[str, Any], answer)

    def apply(self, manifest: Manifest) -> None:
        """Server-side apply under the operator's field manager, taking over conflicts."""
        metadata = manifest["metadata"]
        path = collection_path(manifest["apiVersion"], manifest["kind"], metadata["namespace"])
        self.request(
            "PATCH",
            api_path(path, metadata["name"]),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=manifest,
            content_type="application/apply-patch+yaml",
        )

    def held_by(self, manifest: Manifest, owner_uid: str) -> bool | None:
        """Whether the object a manifest names exists and is `owner_uid`'s (its owner
        references name it): None when there is none, False when another holds the name.
        Looked up by a list of that one name, which the operator's role grants for every kind
        it renders (a get it has not for all)."""
        metadata = manifest["metadata"]
        path = collection_path(manifest["apiVersion"], manifest["kind"], metadata["namespace"])
        query = [("fieldSelector", f"metadata.name={metadata['name']}")]
        items = self.request("GET", path, query=query).get("items") or []
        if not items:
            return None
        owners = items[0].get("metadata", {}).get("ownerReferences") or []
        return any(owner.get("uid") == owner_uid for owner in owners)

    def delete(self, namespace: str, ref: ObjectRef) -> None:
        path = collection_path(ref.api_version, ref.kind, namespace)
        try:
            self.request(
                "DELETE", api_path(path, ref.name), body={"propagationPolicy": "Background"}
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def owned(self, bot: ChatBot) -> list[ObjectRef]:
        """The objects of PRUNED_KINDS this ChatBot's controller owns, found by label and
        owner uid."""
        selector = (
            f"app.kubernetes.io/instance={bot.name},app.kubernetes.io/managed-by={MANAGED_BY}"
        )
        found = []
        for api_version, kind in PRUNED_KINDS:
            listing = self.request(
                "GET",
                collection_path(api_version, kind, bot.namespace),
                query=[("labelSelector", selector)],
            )
            for item in listing["items"]:
                owners = item["metadata"].get("ownerReferences") or []
                if any(owner["uid"] == bot.uid for owner in owners):
                    found.append(ObjectRef(api_version, kind, item["metadata"]["name"]))
        return found

    def secret_keys(self, namespace: str, name: str) -> tuple[str, frozenset[str]] | None:
        """A Secret's resourceVersion and the names of its keys; None when it does not
        exist. Its values are never kept or returned. A Secret read here is labelled for the
        operator's watch (WATCH_LABEL), which sees only labelled Secrets."""
        try:
            secret = self.request(
                "GET", api_path("/api/v1", "namespaces", namespace, "secrets", name)
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        self._watch(namespace, "secrets", secret)
        keys = frozenset((secret.get("data") or {}).keys())
        return str(secret["metadata"]["resourceVersion"]), keys

    def _watch(self, namespace: str, collection: str, found: dict[str, Any]) -> None:
        """Label an object the operator must hear about (a Secret or ConfigMap a ChatBot
        names) for its watch: the API server then sends it that object's changes and no
        other's. Its own labels are merged, nothing else is touched."""
        metadata = found["metadata"]
        if WATCH_LABEL in (metadata.get("labels") or {}):
            return
        self.request(
            "PATCH",
            api_path("/api/v1", "namespaces", namespace, collection, metadata["name"]),
            body={"metadata": {"labels": {WATCH_LABEL: "true"}}},
            content_type="application/merge-patch+json",
        )

    def unwatch(self, namespace: str, collection: str, name: str) -> None:
        """Take the watch label off a user's Secret or ConfigMap that no ChatBot names any
        more: the operator leaves nothing of its own on objects it does not own."""
        try:
            self.request(
                "PATCH",
                api_path("/api/v1", "namespaces", namespace, collection, name),
                body={"metadata": {"labels": {WATCH_LABEL: None}}},
                content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def list_all(self, path: str, selector: str = "") -> list[dict[str, Any]]:
        """Every object of a collection, read in pages."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = [("limit", str(PAGE_SIZE))]
            query += [("labelSelector", selector)] if selector else []
            query += [("continue", token)] if token else []
            page = self.request("GET", path, query=query)
            items.extend(page.get("items") or [])
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return items

    def chatbot(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ChatBot as the API server holds it now; None when it is gone."""
        try:
            return self.request(
                "GET", api_path(CHATBOTS_ROOT, "namespaces", namespace, PLURAL, name)
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def config_map_digest(self, namespace: str, name: str) -> str:
        """A hash of a ConfigMap's content, so a Job over it can be named by its version."""
        try:
            config_map = self.request(
                "GET", api_path("/api/v1", "namespaces", namespace, "configmaps", name)
            )
        except ApiException as error:
            if error.status == 404:
                return MISSING
            raise
        self._watch(namespace, "configmaps", config_map)
        content = [config_map.get("data") or {}, config_map.get("binaryData") or {}]
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def job_failure(self, namespace: str, job: str) -> str:
        """What the last failed Pod of a Job said as it ended (its termination message, or
        its log's last lines), its lines joined; empty when no Pod said anything."""
        listing = self.request(
            "GET",
            api_path("/api/v1", "namespaces", namespace, "pods"),
            query=[("labelSelector", f"batch.kubernetes.io/job-name={job}")],
        )
        said = []
        for pod in listing["items"]:
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                ended = (container.get("state") or {}).get("terminated") or {}
                if ended.get("exitCode") and ended.get("message"):
                    said.append((ended.get("finishedAt") or "", ended["message"]))
        if not said:
            return ""
        lines = [line.strip() for line in redact(max(said)[1]).splitlines() if line.strip()]
        return "; ".join(lines[-MESSAGE_LINES:])

    def create(self, manifest: Manifest) -> bool:
        """Create an object unless one of its name exists, which is left as it is; returns
        whether it was created. For what must never be overwritten, such as issued keys."""
        metadata = manifest["metadata"]
        path = collection_path(manifest["apiVersion"], manifest["kind"], metadata["namespace"])
        try:
            self.request("POST", path, body=manifest)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def add_keys(self, namespace: str, name: str, values: dict[str, str]) -> None:
        """Add keys to a Secret, leaving those it has as they are."""
        self.request(
            "PATCH",
            api_path("/api/v1", "namespaces", namespace, "secrets", name),
            body={"stringData": values},
            content_type="application/merge-patch+json",
        )

    def patch_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> bool:
        """Write a ChatBot's status; with `resource_version`, only over the version it was
        computed from: False, and nothing written, when the ChatBot has changed since."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            self.request(
                "PATCH",
                api_path(CHATBOTS_ROOT, "namespaces", namespace, PLURAL, name, "status"),
                body=body,
                content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status == 409 and resource_version:
                return False
            raise
        return True
