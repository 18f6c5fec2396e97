"""Dynamic volumes for the cluster with a real node, the way local-path-provisioner serves kind
and k3s: a claim of the default class gets a world-writable folder on the node it is used on,
as a hostPath PersistentVolume bound to it; when the claim goes, the folder goes.

kube-controller-manager's own hostpath provisioner is not used with a real node: it makes
root-owned 0750 folders that pods running as a non-root user (Weaviate, Redis) cannot write,
and it always writes under one fixed folder of the host shared with every other cluster.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

PROVISIONER = "testbed.tertulia.dev/local-path"
STORAGE_CLASS = "standard"
_ANNOTATION_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
_ANNOTATION_NODE = "volume.kubernetes.io/selected-node"
_PV_PATH_ANNOTATION = "testbed.tertulia.dev/path"

log = logging.getLogger(__name__)


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        # Bound where its first pod is scheduled, so the folder is on that pod's node.
        "volumeBindingMode": "WaitForFirstConsumer",
    }


def volume_for(claim: Any, path: Path) -> dict[str, Any]:
    """The PersistentVolume that serves `claim` (a V1PersistentVolumeClaim) from `path`."""
    annotations = claim.metadata.annotations or {}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{claim.metadata.uid}",
            "annotations": {
                "pv.kubernetes.io/provisioned-by": PROVISIONER,
                _PV_PATH_ANNOTATION: str(path),
            },
        },
        "spec": {
            "capacity": {"storage": claim.spec.resources.requests["storage"]},
            "accessModes": claim.spec.access_modes,
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": claim.spec.storage_class_name,
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": claim.metadata.namespace,
                "name": claim.metadata.name,
                "uid": claim.metadata.uid,
            },
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [annotations[_ANNOTATION_NODE]],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }


class LocalVolumeProvisioner:
    """Polls the claims and volumes of `PROVISIONER` once a second in a thread."""

    def __init__(self, api: Any, root: Path, interval: float = 1.0) -> None:
        self.api = api
        self.root = root
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="provisioner", daemon=True)

    def start(self) -> LocalVolumeProvisioner:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reconcile()
            except Exception:  # the API server restarting, a claim gone meanwhile
                log.debug("provisioning pass failed", exc_info=True)

    def reconcile(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        for claim in core.list_persistent_volume_claim_for_all_namespaces().items:
            annotations = claim.metadata.annotations or {}
            if (
                claim.status.phase == "Pending"
                and not claim.spec.volume_name
                and annotations.get(_ANNOTATION_PROVISIONER) == PROVISIONER
                and _ANNOTATION_NODE in annotations
            ):
                self._provision(core, claim)
        for volume in core.list_persistent_volume().items:
            annotations = volume.metadata.annotations or {}
            if annotations.get(
                "pv.kubernetes.io/provisioned-by"
            ) == PROVISIONER and volume.status.phase in ("Released", "Failed"):
                path = Path(annotations[_PV_PATH_ANNOTATION])
                if path.parent == self.root:
                    shutil.rmtree(path, ignore_errors=True)
                with contextlib.suppress(client.ApiException):
                    core.delete_persistent_volume(volume.metadata.name)

    def _provision(self, core: Any, claim: Any) -> None:
        from kubernetes import client

        path = self.root / f"{claim.metadata.namespace}-{claim.metadata.name}-{claim.metadata.uid}"
        path.mkdir(exist_ok=True)
        # Any user a pod runs as may write, as with local-path-provisioner's folders.
        path.chmod(0o777)
        try:
            core.create_persistent_volume(volume_for(claim, path))
        except client.ApiException as error:
            if error.status != 409:
                raise
