"""Who may edit a ChatBot: the chart's chatbots-view and chatbots-edit ClusterRoles, aggregated
into Kubernetes' own view, edit and admin roles by the real controller manager. Editing a
ChatBot lets its pods read the Secrets it names, so `view` must never be enough."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tertulia.operator.crd import chatbot_crd
from tests.testbed.kube import ControlPlane
from tests.testbed.process import eventually

CHART = Path(__file__).resolve().parents[3] / "charts" / "tertulia"


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    # kubectl auth can-i resolves the resource through discovery: the CRD is served.
    control_plane.install_crd(chatbot_crd())
    roles = control_plane.run_tool(
        "helm", "template", "tertulia", str(CHART), "--show-only", "templates/user-roles.yaml",
        check=True,
    ).stdout  # fmt: skip
    control_plane.run_tool("kubectl", "apply", "-f", "-", stdin=roles, check=True)
    core = client.CoreV1Api(control_plane.api_client())
    name = f"rbac-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    rbac = client.RbacAuthorizationV1Api(control_plane.api_client())
    for user, role in (("ana", "edit"), ("bob", "view")):
        rbac.create_namespaced_role_binding(
            name,
            {
                "metadata": {"name": f"{user}-{role}"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [
                    {"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}
                ],
            },
        )
    yield name
    core.delete_namespace(name)
    control_plane.run_tool("kubectl", "delete", "-f", "-", stdin=roles)


def can(control_plane: ControlPlane, user: str, verb: str, namespace: str) -> bool:
    answer = control_plane.run_tool(
        "kubectl", "auth", "can-i", verb, "chatbots.tertulia.dev", "--as", user, "-n", namespace
    )
    return answer.stdout.strip() == "yes"


def test_view_reads_chatbots_and_only_edit_changes_them(
    control_plane: ControlPlane, namespace: str
) -> None:
    eventually(
        lambda: can(control_plane, "ana", "create", namespace),
        60,
        "the edit role to be aggregated",
    )
    assert can(control_plane, "ana", "delete", namespace)
    assert can(control_plane, "bob", "get", namespace) and can(
        control_plane, "bob", "list", namespace
    )
    for verb in ("create", "update", "patch", "delete"):
        assert not can(control_plane, "bob", verb, namespace), verb
    assert not can(control_plane, "carol", "get", namespace)
