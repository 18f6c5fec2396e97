"""The operator's periodic resync, against the real control plane: a change no watch reported
is found and carried out all the same.

Its own module, with an operator that resyncs every few seconds: the shared one resyncs at
the default five minutes, and only one operator may run against the control plane at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from tertulia.operator.crd import chatbot_crd
from tertulia.operator.render.common import WATCH_LABEL
from tests.e2e.test_operator import (
    EXAMPLE_SECRETS,
    READY_TIMEOUT,
    Operator,
    apply,
    create_secrets,
    fresh_namespace,
    load_example,
    wait_phase,
)
from tests.testbed.kube import ControlPlane
from tests.testbed.process import eventually

RESYNC_SECONDS = 3


@pytest.fixture(scope="module")
def resyncing_operator(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    control_plane.install_crd(chatbot_crd())
    running = Operator(
        control_plane,
        tmp_path_factory.mktemp("operator"),
        env={"TERTULIA_OPERATOR_RESYNC_SECONDS": str(RESYNC_SECONDS)},
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane, resyncing_operator: Operator) -> Iterator[str]:
    with fresh_namespace(control_plane, "resync") as name:
        yield name


def test_a_change_no_watch_reported_is_carried_out_by_the_resync(
    control_plane: ControlPlane, namespace: str
) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    batch = client.BatchV1Api(control_plane.api_client())
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "team-docs"}, "data": {"faq.md": "# FAQ\n\nOne.\n"}}
    )
    create_secrets(control_plane, namespace, EXAMPLE_SECRETS["vllm-gpu-slack-kb"])
    apply(control_plane, namespace, load_example("vllm-gpu-slack-kb"))
    wait_phase(control_plane, namespace, "harbour")

    def jobs() -> set[str]:
        selector = "app.kubernetes.io/instance=harbour,app.kubernetes.io/component=ingest"
        return {
            str(job.metadata.name)
            for job in batch.list_namespaced_job(namespace, label_selector=selector).items
        }

    first = eventually(jobs, timeout=READY_TIMEOUT, what="the ingest Job")
    docs = core.read_namespaced_config_map("team-docs", namespace)
    assert docs.metadata.labels[WATCH_LABEL] == "true"

    # The documents change and, in the same write, lose the label the operator's watch
    # selects by: the watch reports the ConfigMap gone, never changed.
    core.patch_namespaced_config_map(
        "team-docs",
        namespace,
        {"metadata": {"labels": {WATCH_LABEL: None}}, "data": {"faq.md": "# FAQ\n\nTwo.\n"}},
    )

    newer = eventually(
        lambda: (found := jobs() - first) and found,
        timeout=READY_TIMEOUT,
        what="a new ingest Job from the resync",
    )
    assert len(newer) == 1
    # And the ConfigMap is labelled again, so its next change is heard at once.
    relabelled = core.read_namespaced_config_map("team-docs", namespace)
    assert relabelled.metadata.labels[WATCH_LABEL] == "true"
