"""The cluster tier: the test bed's cluster with its real node, the project's images in its
containerd, and the fake platforms and model hub the stack talks to, inside the node's network.

The cluster lives for the package; when it stops, the host must be as it was before it started
(sysctls, iptables, mounts, cgroups, links, namespaces), or the package's teardown fails.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.model_hub import FakeModelHub
from tests.fakes.slack import FakeSlack
from tests.fakes.telegram import FakeTelegram
from tests.testbed.host import differences, host_state
from tests.testbed.kube import REAL_NODE_COMPANIONS, ControlPlane
from tests.testbed.paths import REPO_ROOT

# The chat model and the embedding model, as the stand-in hub serves them.
CHAT_MODEL = "testbed/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDING_MODEL = "testbed/all-MiniLM-L6-v2-GGUF/all-MiniLM-L6-v2.F16.gguf"


def chat_model_spec(hub: str) -> dict[str, Any]:
    """A ChatBot's `spec.model`: llama.cpp serving the chat model from the stand-in hub at
    `hub`, small enough for the real node."""
    return {
        "engine": "llamacpp",
        "source": f"hf://{CHAT_MODEL}",
        # The stand-in hub, as a mirror or an air-gapped hub is named.
        "env": [{"name": "HF_ENDPOINT", "value": hub}],
        "maxModelLen": 2048,
        "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}},
    }


def streamed_answer(
    url: str, headers: dict[str, str], body: dict[str, Any], timeout: float = 300
) -> tuple[int, str, float]:
    """A streamed chat completion through the gateway: its status, its text (or the error's
    body, or the error), and when (monotonic) its first word came (0 without one)."""
    first, text = 0.0, []
    try:
        with httpx.stream(
            "POST", url, json={**body, "stream": True}, headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                return response.status_code, response.read().decode(), 0.0
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line.removeprefix("data: "))["choices"]:
                        if choice["delta"].get("content"):
                            first = first or time.monotonic()
                            text.append(choice["delta"]["content"])
    except httpx.HTTPError as error:
        return 0, f"{type(error).__name__}: {error}", 0.0
    return 200, "".join(text), first


# GPU nodes beside the real one, tainted as GPU pools are: CPU pods stay on the real node.
KWOK_NODES = REAL_NODE_COMPANIONS


def built_images() -> tuple[Path, ...]:
    """The images `make images` builds, as docker-archives (a no-op when nothing changed)."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "build-images.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return tuple(sorted(Path(result.stdout.strip().splitlines()[-1]).glob("*.tar")))


@pytest.fixture(scope="session")
def image_archives() -> tuple[Path, ...]:
    return built_images()


@pytest.fixture(scope="package")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, image_archives: tuple[Path, ...]
) -> Iterator[ControlPlane]:
    before = host_state()
    plane = ControlPlane(
        tmp_path_factory.mktemp("cluster"),
        nodes=KWOK_NODES,
        real_node=True,
        images=image_archives,
    )
    with plane:
        yield plane
    changed = differences(before, host_state())
    assert not changed, "the real node left the host changed:\n" + "\n".join(changed)


@pytest.fixture(scope="package")
def model_hub(cluster: ControlPlane) -> Iterator[FakeModelHub]:
    from tertulia.knowledge.local_model import embedding_model_path
    from tests.testbed.servers import smollm2_model_path

    assert cluster.namespace is not None
    hub = FakeModelHub(
        {CHAT_MODEL: smollm2_model_path(), EMBEDDING_MODEL: embedding_model_path()}
    ).start(cluster.namespace.listen())
    yield hub
    hub.stop()


@pytest.fixture(scope="package")
def fake_telegram(cluster: ControlPlane) -> Iterator[FakeTelegram]:
    assert cluster.namespace is not None
    fake = FakeTelegram().start(cluster.namespace.listen())
    yield fake
    fake.stop()


@pytest.fixture(scope="package")
def fake_slack(cluster: ControlPlane) -> Iterator[FakeSlack]:
    assert cluster.namespace is not None
    fake = FakeSlack().start(cluster.namespace.listen())
    yield fake
    fake.stop()


@pytest.fixture(scope="package")
def fake_model(cluster: ControlPlane) -> Iterator[str]:
    """An OpenAI-compatible model server inside the node's network, answering at once: the
    endpoint of a ChatBot whose test is not about the model. Yields its /v1 URL."""
    import uvicorn

    from tests.fakes.openai_backend import FakeBackend

    assert cluster.namespace is not None
    sock = cluster.namespace.listen()
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(
        uvicorn.Config(FakeBackend(), log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the fake model did not start"
        time.sleep(0.05)
    yield f"http://{host}:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
