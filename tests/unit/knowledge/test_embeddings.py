"""The embeddings client against a scripted OpenAI-compatible server."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from tertulia.knowledge.embeddings import Embedder, EmbeddingError
from tertulia.knowledge.settings import EmbeddingSettings

pytestmark = pytest.mark.unit


def _server(requests: list[dict[str, object]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "mini"}]})
        body = json.loads(request.content)
        requests.append(body)
        texts = body["input"]
        # Returned out of order, as a server may: the client sorts by index.
        data = [
            {"index": index, "embedding": [float(len(text)), 0.0, 0.0]}
            for index, text in reversed(list(enumerate(texts)))
        ]
        return httpx.Response(200, json={"data": data, "model": body["model"]})

    return httpx.MockTransport(handle)


async def test_batches_in_order_as_unit_vectors_with_the_discovered_model() -> None:
    requests: list[dict[str, object]] = []
    embedder = Embedder(EmbeddingSettings(batch_size=2), transport=_server(requests))
    vectors = await embedder.embed(["a", "bb", "ccc"])
    await embedder.aclose()
    assert [body["input"] for body in requests] == [["a", "bb"], ["ccc"]]
    assert {body["model"] for body in requests} == {"mini"}
    assert vectors == [[1.0, 0.0, 0.0]] * 3
    assert all(math.isclose(sum(v * v for v in vector), 1.0) for vector in vectors)


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(500, text="out of memory"), "answered 500: out of memory"),
        (httpx.Response(200, json={"data": [{"index": 0}]}), "malformed"),
        (httpx.Response(200, json={"data": []}), "asked for 1 embeddings, got 0"),
        (
            httpx.Response(200, json={"data": [{"index": 0, "embedding": [0.0, 0.0]}]}),
            "zero vector",
        ),
    ],
)
async def test_failures_are_embedding_errors_that_say_what(
    response: httpx.Response, message: str
) -> None:
    transport = httpx.MockTransport(lambda request: response)
    embedder = Embedder(EmbeddingSettings(model="mini"), transport=transport)
    with pytest.raises(EmbeddingError, match=message):
        await embedder.embed_one("question")
    await embedder.aclose()


async def test_an_unreachable_server_is_an_embedding_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    embedder = Embedder(EmbeddingSettings(model="mini"), transport=httpx.MockTransport(refuse))
    with pytest.raises(EmbeddingError, match="cannot be reached"):
        await embedder.embed_one("question")
    await embedder.aclose()
