"""Attacks on the gateway's front door, each against a real gateway process: bodies sent by
callers who are not known, or not allowed that much, are refused from the headers alone."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.testbed.process import ManagedProcess
from tests.testbed.servers import start_gateway

MIB = 1024 * 1024


@dataclass
class Gate:
    url: str
    port: int
    keys: dict[str, str]

    def bearer(self, identity: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[identity]}"}


def start(workdir: Path, backend: str, **settings: str) -> tuple[Gate, ManagedProcess]:
    keys = {"admin": "admin-key-0123456789", "slack": "slack-key-0123456789"}
    folder = workdir / "keys"
    folder.mkdir(exist_ok=True)
    for identity, key in keys.items():
        (folder / identity).write_text(key)
    process, url = start_gateway(
        workdir,
        {"BACKEND__URL": backend, "API_KEYS_DIR": str(folder), **settings},
        name=f"gateway-{len(settings)}",
    )
    return Gate(url, int(url.rsplit(":", 1)[1]), keys), process


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory, llama_url: str) -> Iterator[Gate]:
    """A gateway with keys and the knowledge base on: its admin routes exist. Its Weaviate
    is never reached by these requests (a closed port)."""
    found, process = start(
        tmp_path_factory.mktemp("gate"),
        llama_url,
        KNOWLEDGE_BASE__ENABLED="true",
        KNOWLEDGE_BASE__WEAVIATE_URL="http://127.0.0.1:9",
    )
    yield found
    process.stop()


def answer_to_headers_alone(port: int, path: str, length: int, headers: dict[str, str]) -> str:
    """Send a POST's headers announcing a `length`-byte JSON body and none of the body; the
    status line the server answers with, or "" when it waits for the body (5 s)."""
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            return connection.recv(4096).decode().split("\r\n", 1)[0]
        except TimeoutError:
            return ""


@pytest.mark.parametrize("path", ["/admin/knowledge/documents", "/chat", "/v1/chat/completions"])
def test_a_body_without_a_key_is_refused_before_a_byte_of_it_is_read(gate: Gate, path: str) -> None:
    status = answer_to_headers_alone(gate.port, path, 32 * MIB, {})
    # Answered while the body is still to come: nothing of it was read, let alone parsed.
    assert status.startswith("HTTP/1.1 401"), status


def test_a_wrong_key_is_refused_before_its_body_is_read(gate: Gate) -> None:
    status = answer_to_headers_alone(
        gate.port, "/admin/knowledge/documents", 32 * MIB, {"Authorization": "Bearer guess"}
    )
    assert status.startswith("HTTP/1.1 401"), status


def test_a_key_that_is_not_an_admins_is_refused_the_admin_api_before_its_body(gate: Gate) -> None:
    status = answer_to_headers_alone(
        gate.port, "/admin/knowledge/documents", 32 * MIB, gate.bearer("slack")
    )
    assert status.startswith("HTTP/1.1 403"), status


def test_the_upload_size_is_an_admins_alone(gate: Gate) -> None:
    """The 32 MiB limit is the admin's, on the upload routes; everyone else, and the admin
    elsewhere, may send 256 KiB."""
    one_mib = 1 * MIB
    for identity, path in [("slack", "/chat"), ("admin", "/chat"), ("admin", "/events")]:
        status = answer_to_headers_alone(gate.port, path, one_mib, gate.bearer(identity))
        assert status.startswith("HTTP/1.1 413"), (identity, path, status)
    # The admin's upload of the same size is taken: the server waits for its body.
    assert (
        answer_to_headers_alone(
            gate.port, "/admin/knowledge/documents", one_mib, gate.bearer("admin")
        )
        == ""
    )


def test_a_body_over_the_limit_sent_in_chunks_is_cut_off_with_413(gate: Gate) -> None:
    """No Content-Length to refuse it by: the body is counted as it arrives."""

    def chunks() -> Iterator[bytes]:
        yield b'{"message": "'
        for _ in range(64):
            yield b"x" * 16384

    response = httpx.post(
        f"{gate.url}/chat", content=chunks(), headers=gate.bearer("slack"), timeout=30
    )
    assert response.status_code == 413
    assert "limit of 262144 bytes" in response.json()["error"]["message"]


def test_refused_requests_are_answered_whole_while_the_body_still_streams(gate: Gate) -> None:
    """The client sending its whole 8 MiB reads the 401, not a reset connection, and the
    connection serves the next request."""
    body = b"x" * (8 * MIB)
    with httpx.Client(base_url=gate.url, timeout=30) as client:
        refused = client.post("/admin/knowledge/documents", content=body)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert client.get("/healthz").status_code == 200


def test_the_admin_api_is_not_found_when_the_knowledge_base_is_off(
    tmp_path: Path, llama_url: str
) -> None:
    found, process = start(tmp_path, llama_url)
    try:
        status = answer_to_headers_alone(
            found.port, "/admin/knowledge/documents", 32 * MIB, found.bearer("admin")
        )
        assert status.startswith("HTTP/1.1 404"), status
        listed = httpx.get(
            f"{found.url}/admin/knowledge/documents", headers=found.bearer("admin"), timeout=10
        )
        assert listed.status_code == 404
        assert listed.json()["error"]["code"] == "knowledge_base_disabled"
    finally:
        process.stop()
