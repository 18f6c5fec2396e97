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


def _limited_server(limit: int, requests: list[list[str]]) -> httpx.MockTransport:
    """A server whose model holds `limit` words, refusing longer inputs as llama.cpp does;
    a text's embedding says how many words of each kind it holds."""

    def handle(request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["input"]
        requests.append(texts)
        for text in texts:
            if len(text.split()) > limit:
                return httpx.Response(
                    400,
                    json={
                        "error": {
                            "code": 400,
                            "message": f"input ({len(text.split())} tokens) is larger than the "
                            f"max context size ({limit} tokens). skipping",
                            "type": "exceed_context_size_error",
                        }
                    },
                )
        data = [
            {
                "index": index,
                "embedding": [float(text.split().count("tide")), float(text.split().count("fee"))],
            }
            for index, text in enumerate(texts)
        ]
        return httpx.Response(200, json={"data": data})

    return httpx.MockTransport(handle)


async def test_a_text_past_the_models_context_is_embedded_from_its_parts() -> None:
    requests: list[list[str]] = []
    embedder = Embedder(EmbeddingSettings(model="mini"), transport=_limited_server(4, requests))
    long = "tide tide tide fee fee fee fee fee fee"  # nine words: halves of four and five
    vectors = await embedder.embed(["tide", long, "fee"])
    await embedder.aclose()
    # The batch is refused, its texts tried alone, and the long one embedded from parts
    # that fit: four words, then five split again into two and three.
    assert requests == [
        ["tide", long, "fee"],
        ["tide"],
        [long],
        ["tide tide tide fee"],
        ["fee fee fee fee fee"],
        ["fee fee"],
        ["fee fee fee"],
        ["fee"],
    ]
    assert vectors[0] == [1.0, 0.0] and vectors[2] == [0.0, 1.0]
    # The parts' unit vectors, weighted by their words: (3, 1)/|.| x 4 + (0, 1) x 5.
    first = [3 / math.sqrt(10), 1 / math.sqrt(10)]
    expected = [4 * first[0], 4 * first[1] + 5]
    norm = math.hypot(*expected)
    assert vectors[1] == pytest.approx([value / norm for value in expected])


async def test_a_long_question_is_embedded_and_other_refusals_are_not_split() -> None:
    requests: list[list[str]] = []
    embedder = Embedder(EmbeddingSettings(model="mini"), transport=_limited_server(2, requests))
    vector = await embedder.embed_one("tide " * 7)
    assert vector == pytest.approx([1.0, 0.0])
    await embedder.aclose()

    refused = httpx.MockTransport(lambda request: httpx.Response(400, text="unknown model"))
    embedder = Embedder(EmbeddingSettings(model="mini"), transport=refused)
    with pytest.raises(EmbeddingError, match="answered 400: unknown model"):
        await embedder.embed_one("tide " * 7)
    await embedder.aclose()


async def test_text_without_spaces_is_split_between_characters() -> None:
    requests: list[list[str]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["input"]
        requests.append(texts)
        if any(len(text) > 3 for text in texts):
            return httpx.Response(
                500, text="input (9 tokens) is too large to process. increase the physical batch"
            )
        return httpx.Response(
            200, json={"data": [{"index": i, "embedding": [1.0, 1.0]} for i in range(len(texts))]}
        )

    embedder = Embedder(EmbeddingSettings(model="mini"), transport=httpx.MockTransport(handle))
    vector = await embedder.embed_one("潮の満ち引きは一日二回")
    await embedder.aclose()
    assert vector == pytest.approx([1 / math.sqrt(2)] * 2)
    assert all(len(text) <= 3 for text in requests[-1])
