"""The operator's calls to the Kubernetes API: server-side apply under one field manager,
deletes, owned-object listing, Secret checks and status patches."""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from tertulia.operator.api import GROUP, PLURAL, VERSION, ChatBot
from tertulia.operator.plan import Manifest, ObjectRef
from tertulia.operator.render.common import MANAGED_BY

logger = logging.getLogger(__name__)

FIELD_MANAGER = "tertulia-operator"
# Every kind the renders produce: what is listed to find objects to delete.
OWNED_KINDS = (
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("batch/v1", "Job"),
    ("networking.k8s.io/v1", "Ingress"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
)


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
        self.dynamic = DynamicClient(self.api)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def apply(self, manifest: Manifest) -> None:
        resource = self.dynamic.resources.get(
            api_version=manifest["apiVersion"], kind=manifest["kind"]
        )
        self.dynamic.server_side_apply(
            resource,
            body=manifest,
            namespace=manifest["metadata"].get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )

    def delete(self, namespace: str, ref: ObjectRef) -> None:
        resource = self.dynamic.resources.get(api_version=ref.api_version, kind=ref.kind)
        with contextlib.suppress(NotFoundError):
            resource.delete(name=ref.name, namespace=namespace, propagation_policy="Background")

    def owned(self, bot: ChatBot) -> list[ObjectRef]:
        """The objects this ChatBot's controller owns, found by label and owner uid."""
        selector = (
            f"app.kubernetes.io/instance={bot.name},app.kubernetes.io/managed-by={MANAGED_BY}"
        )
        found = []
        for api_version, kind in OWNED_KINDS:
            resource = self.dynamic.resources.get(api_version=api_version, kind=kind)
            for item in resource.get(namespace=bot.namespace, label_selector=selector).items:
                owners = item.metadata.get("ownerReferences") or []
                if any(owner.uid == bot.uid for owner in owners):
                    found.append(ObjectRef(api_version, kind, item.metadata.name))
        return found

    def secret_has_key(self, namespace: str, name: str, key: str) -> bool:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return key in (secret.data or {}) or key in (secret.string_data or {})

    def ensure_api_keys(self, bot: ChatBot, name: str) -> bool:
        """Create the gateway's key Secret with a key for the bots if it is missing; never
        overwrite it, so keys handed out stay valid. Returns whether it was created."""
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=name,
                namespace=bot.namespace,
                labels={
                    "app.kubernetes.io/instance": bot.name,
                    "app.kubernetes.io/managed-by": MANAGED_BY,
                },
                owner_references=[
                    client.V1OwnerReference(
                        api_version=f"{GROUP}/{VERSION}",
                        kind="ChatBot",
                        name=bot.name,
                        uid=bot.uid,
                        controller=True,
                    )
                ],
            ),
            type="Opaque",
            string_data={"bots": secrets.token_urlsafe(32)},
        )
        try:
            self.core.create_namespaced_secret(bot.namespace, body)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )
