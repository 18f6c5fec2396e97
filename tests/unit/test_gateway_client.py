"""The gateway client's connection retries: a gateway pod that has just stopped listening,
before its Service drops it, refuses a connection; the client opens another."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tertulia.common.gateway_client import GatewayClient, GatewayUnavailable

RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n"
    b"connection: close\r\n\r\n"
    b'{"first": true}'
)


def serve_once_after(listener: socket.socket, delay: float) -> None:
    """Start listening after `delay` (connections before it are refused), answer one request."""
    time.sleep(delay)
    listener.listen(1)
    connection, _ = listener.accept()
    with connection:
        request = b""
        while b"\r\n\r\n" not in request:
            request += connection.recv(4096)
        connection.sendall(RESPONSE)


async def test_a_refused_connection_is_tried_again_until_the_gateway_listens() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = listener.getsockname()[1]
        # httpcore tries again at once, then after 0.5 s: the server is up by the third try.
        server = threading.Thread(target=serve_once_after, args=(listener, 0.2), daemon=True)
        server.start()
        client = GatewayClient(f"http://127.0.0.1:{port}")
        try:
            assert await client.claim_event("evt-1", ttl_seconds=60) is True
        finally:
            await client.aclose()
        server.join(timeout=5)


async def test_a_gateway_that_never_listens_is_unavailable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        client = GatewayClient(f"http://127.0.0.1:{listener.getsockname()[1]}")
        try:
            with pytest.raises(GatewayUnavailable, match="cannot reach the gateway"):
                await client.claim_event("evt-1", ttl_seconds=60)
        finally:
            await client.aclose()
