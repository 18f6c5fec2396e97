"""The embeddings client against a scripted OpenAI-compatible server."""

from __future__ import annotations

import asyncio
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


def _held_server(requests: list[list[str]], release: asyncio.Event) -> httpx.MockTransport:
    """A server that answers each request once `release` is set, recording its inputs."""

    async def handle(request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["input"]
        requests.append(texts)
        await release.wait()
        data = [
            {"index": index, "embedding": [float(len(text)), 1.0, 0.0]}
            for index, text in enumerate(texts)
        ]
        return httpx.Response(200, json={"data": data})

    return httpx.MockTransport(handle)


async def test_questions_that_arrive_while_one_is_out_go_together_and_once_each() -> None:
    requests: list[list[str]] = []
    release = asyncio.Event()
    embedder = Embedder(
        EmbeddingSettings(model="mini", batch_size=3), transport=_held_server(requests, release)
    )
    first = asyncio.create_task(embedder.embed_one("a"))
    await asyncio.sleep(0.01)
    # While "a" is out: five questions, one of them twice and one the question on its way.
    later = [asyncio.create_task(embedder.embed_one(text)) for text in "bcbdea"]
    await asyncio.sleep(0.01)
    assert requests == [["a"]]
    release.set()
    vectors = await asyncio.gather(first, *later)
    await embedder.aclose()
    # The idle server got "a" at once; the rest went in batches of at most 3, none twice.
    assert requests == [["a"], ["b", "c", "d"], ["e"]]
    assert [vector[0] for vector in vectors] == [pytest.approx(1 / math.sqrt(2))] * 7


async def test_a_question_asked_again_costs_no_request_until_it_leaves_the_cache() -> None:
    requests: list[list[str]] = []
    release = asyncio.Event()
    release.set()
    embedder = Embedder(
        EmbeddingSettings(model="mini", query_cache_size=2),
        transport=_held_server(requests, release),
    )
    first = await embedder.embed_one("tide")
    assert await embedder.embed_one("tide") == first
    await embedder.embed_one("fee")
    await embedder.embed_one("berth")  # the cache holds two: "tide" leaves it
    await embedder.embed_one("tide")
    await embedder.aclose()
    assert requests == [["tide"], ["fee"], ["berth"], ["tide"]]


async def test_a_failed_batch_fails_each_of_its_questions_and_is_not_kept() -> None:
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(500, text="out of memory")
        texts = json.loads(request.content)["input"]
        data = [{"index": i, "embedding": [1.0, 0.0]} for i, _ in enumerate(texts)]
        return httpx.Response(200, json={"data": data})

    embedder = Embedder(EmbeddingSettings(model="mini"), transport=httpx.MockTransport(flaky))
    failed = await asyncio.gather(
        embedder.embed_one("a"), embedder.embed_one("b"), return_exceptions=True
    )
    assert [str(error) for error in failed] == [
        "the embeddings server answered 500: out of memory"
    ] * 2
    assert await embedder.embed_one("a") == [1.0, 0.0]
    await embedder.aclose()
    assert calls == 2


async def test_a_question_whose_asker_left_still_serves_the_others() -> None:
    requests: list[list[str]] = []
    release = asyncio.Event()
    embedder = Embedder(EmbeddingSettings(model="mini"), transport=_held_server(requests, release))
    leaving = asyncio.create_task(embedder.embed_one("tide"))
    staying = asyncio.create_task(embedder.embed_one("tide"))
    await asyncio.sleep(0.01)
    leaving.cancel()
    release.set()
    assert (await staying)[1] == pytest.approx(1 / math.sqrt(17))
    await embedder.aclose()
    assert requests == [["tide"]]
