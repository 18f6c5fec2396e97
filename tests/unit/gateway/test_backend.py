"""The backend client retries only what never reached the server and reports the rest."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from tertulia.gateway.backend import Backend, StreamBroken
from tertulia.gateway.errors import BackendTimeout, BackendUnavailable
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.settings import BackendSettings
from tests.fakes.openai_backend import FakeBackend, serving
from tests.testbed.process import free_port

BODY = {"messages": [{"role": "user", "content": "hi"}]}


def backend(url: str, **settings: object) -> Backend:
    return Backend(BackendSettings(url=url, **settings), GatewayMetrics.create())


async def test_connection_errors_are_retried_then_reported_as_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    # The backoff alone: patching asyncio.sleep would stop every sleep of the process (a
    # loop elsewhere then spins and fills `waits`, as seen once in a full run).
    monkeypatch.setattr("tertulia.gateway.backend.back_off", no_wait)
    client = backend(f"http://127.0.0.1:{free_port()}/v1", model="m", retries=2)

    with pytest.raises(BackendUnavailable) as raised:
        await client.complete(BODY)
    await client.aclose()

    assert waits == [0.2, 0.4], "two retries, with exponential backoff"
    assert raised.value.headers == {"Retry-After": "5"}


async def test_a_read_timeout_is_504_and_not_retried(fake: FakeBackend, fake_url: str) -> None:
    fake.config.first_token_delay = 1.0
    client = backend(fake_url, read_timeout=0.2, retries=2)

    with pytest.raises(BackendTimeout):
        await client.complete(BODY)
    await client.aclose()

    assert len(fake.requests) == 1


async def test_stream_yields_each_event_and_ends_at_done(fake: FakeBackend, fake_url: str) -> None:
    fake.config.reply = "Hello there"
    client = backend(fake_url)

    opened = await client.open_stream(BODY)
    events = [event async for event in opened.events()]
    await opened.aclose()
    await client.aclose()

    assert "".join(event.text() for event in events) == "Hello there"
    assert events[-1].done
    assert events[-2].usage() == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


async def test_a_stream_cut_mid_way_raises_stream_broken_after_the_tokens_it_had(
    fake: FakeBackend, fake_url: str
) -> None:
    fake.config.reply = "one two three four"
    fake.config.cut_after_tokens = 2
    client = backend(fake_url)

    opened = await client.open_stream(BODY)
    received = []
    with pytest.raises(StreamBroken, match="interrupted"):
        async for event in opened.events():
            received.append(event.text())
    await client.aclose()

    assert "".join(received) == "one two"


async def test_a_stream_that_ends_without_done_is_broken_too(
    fake: FakeBackend, fake_url: str
) -> None:
    fake.config.omit_done = True
    client = backend(fake_url)

    opened = await client.open_stream(BODY)
    with pytest.raises(StreamBroken, match="ended early"):
        async for _ in opened.events():
            pass
    await client.aclose()


async def test_closing_a_stream_early_drops_the_upstream_request(
    fake: FakeBackend, fake_url: str
) -> None:
    fake.config.reply = " ".join(["word"] * 200)
    fake.config.token_delay = 0.01
    client = backend(fake_url)

    opened = await client.open_stream(BODY)
    async for _ in opened.events():
        break
    await opened.aclose()
    await asyncio.sleep(0.1)
    await client.aclose()

    assert fake.streams_cancelled == 1


async def test_without_a_configured_model_the_first_listed_is_used(
    fake: FakeBackend, fake_url: str
) -> None:
    fake.config.model = "gemma"
    client = backend(fake_url)

    await client.complete(BODY)
    await client.aclose()

    assert fake.requests[-1]["model"] == "gemma"


async def test_a_connection_idle_past_the_keepalive_is_not_reused() -> None:
    """A model server closes idle connections (vLLM's and llama.cpp's after 5 s); a request
    sent on one as it closes fails. The gateway closes its own first."""
    accepted = 0
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")  # GET /models: headers only
                writer.write(answer)
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = backend(f"http://127.0.0.1:{port}/v1", model="m", keepalive_seconds=0.3)
    try:
        await client.list_models()
        await client.list_models()
        assert accepted == 1, "a connection in use within the keep-alive is reused"
        await asyncio.sleep(0.6)
        await client.list_models()
        assert accepted == 2
    finally:
        await client.aclose()
        server.close()


async def test_each_conversation_stays_on_one_replica_and_an_unreachable_one_gives_way() -> None:
    first, second = FakeBackend(), FakeBackend()
    async with serving(first) as one, serving(second) as two:
        dead = f"http://127.0.0.1:{free_port()}/v1"
        client = backend(one, retries=2, model="fake")  # no /models lookup to count
        client.router.update([one, two, dead])
        fakes = {one: first, two: second}
        conversations = [f"c{index}" for index in range(12)]
        for turn in range(3):
            for key in conversations:
                body = {"messages": [{"role": "user", "content": f"{key} turn {turn}"}]}
                await client.complete(body, key=key)
        # Three turns each, all on one replica per conversation; those whose own replica is
        # not listening were answered by their next one, without an error.
        expected: Counter[str] = Counter()
        for key in conversations:
            pick = client.router.pick(key)
            expected[next(url for url in [pick.url, *pick.fallbacks] if url != dead)] += 3
        assert {url: len(fake.requests) for url, fake in fakes.items()} == {
            one: expected[one],
            two: expected[two],
        }
        # The turns of each conversation went to one replica.
        for key in conversations:
            hosts = [
                url
                for url, fake in fakes.items()
                for request in fake.requests
                if request["messages"][0]["content"].split()[0] == key
            ]
            assert len(hosts) == 3 and len(set(hosts)) == 1, (key, hosts)
        routed = {
            sample.labels["outcome"]: sample.value
            for sample in next(iter(client._metrics.routed.collect())).samples
            if sample.name.endswith("_total")
        }
        assert routed.get("neighbour", 0) > 0, "no conversation hashed to the dead replica"
        assert sum(routed.values()) == 3 * len(conversations)  # each request counted once
        await client.aclose()


async def test_a_stream_counts_on_its_replica_until_it_is_closed(fake: FakeBackend) -> None:
    async with serving(fake) as url:
        client = backend("http://model.invalid:8000/v1")  # the Service: not used
        client.router.update([url])
        opened = await client.open_stream(BODY, key="c1")
        assert client.router.load(url) == 1
        [event async for event in opened.events()]
        await opened.aclose()
        await opened.aclose()  # twice is once
        assert client.router.load(url) == 0
        await client.complete(BODY, key="c1")
        assert client.router.load(url) == 0
        await client.aclose()


async def test_a_replica_gone_while_still_listed_is_left_out_and_at_zero_the_request_waits(
    fake: FakeBackend,
) -> None:
    async with serving(fake) as alive:
        gone = f"http://127.0.0.1:{free_port()}/v1"
        client = backend(alive, retries=2, model="fake")
        # Scaled to zero a moment ago: the lookup still lists the pod that went.
        client.router.update([gone])
        waited: list[tuple[str, ...]] = []

        async def hold() -> None:
            # What the autoscaler's hold sees, then a replica woken and listed.
            waited.append(client.router.replicas)
            client.router.update([alive])

        client.hold = hold
        answer = await client.complete(BODY, key="conversation")
        assert answer["choices"][0]["message"]["content"]
        # One try on the gone replica, which was then left out, and the request waited for
        # one rather than failing.
        assert waited == [()]
        assert len(fake.requests) == 1
        await client.aclose()


async def test_a_probe_in_flight_is_not_load_but_a_completion_is() -> None:
    # A replica that takes connections and never answers: both requests stay in flight.
    server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    client = backend("http://model.invalid:8000/v1", model="m")
    client.router.update([url])
    probe = asyncio.create_task(client.ping())
    await asyncio.sleep(0.2)
    # A readiness probe would otherwise count as a request, and wake a model scaled to zero.
    assert client.router.load(url) == 0
    completion = asyncio.create_task(client.complete(BODY, key="c1"))
    await asyncio.sleep(0.2)
    assert client.router.load(url) == 1
    for task in (probe, completion):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    server.close()
    await client.aclose()


async def test_replicas_the_lookup_lists_after_they_went_are_left_out_without_using_retries(
    fake: FakeBackend,
) -> None:
    async with serving(fake) as alive:
        gone = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(3)]
        client = backend(alive, retries=0, model="fake")
        # Pods of a scale-down, still listed (the cluster DNS caches its answers for a while).
        client.router.update([*gone, alive])
        for index in range(8):
            answer = await client.complete(BODY, key=f"conversation-{index}")
            assert answer["choices"][0]["message"]["content"]
        assert client.router.replicas == (alive,)
        assert len(fake.requests) == 8
        await client.aclose()


async def test_a_replica_that_closes_without_answering_gives_the_request_to_the_next_once(
    fake: FakeBackend,
) -> None:
    took: list[int] = []

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Reads the request and goes, as a pod that is stopping may.
        await reader.readuntil(b"\r\n\r\n")
        took.append(1)
        writer.close()

    stopping = await asyncio.start_server(drop, "127.0.0.1", 0)
    dropping = f"http://127.0.0.1:{stopping.sockets[0].getsockname()[1]}/v1"
    async with serving(fake) as alive:
        client = backend(alive, model="fake")
        client.router.update([dropping, alive])
        keys = [f"c{index}" for index in range(40)]
        own = [key for key in keys if client.router.pick(key).url == dropping]
        assert own, "no conversation hashed to the dropping replica"
        for key in own:
            answer = await client.complete(BODY, key=key)
            assert answer["choices"][0]["message"]["content"]
        assert len(took) == len(own) and len(fake.requests) == len(own)
        # Alone, it is tried twice, then the client is told to come back.
        client.router.update([dropping])
        with pytest.raises(BackendUnavailable, match="lost"):
            await client.complete(BODY, key=own[0])
        assert len(took) == len(own) + 2
        await client.aclose()
    stopping.close()


@pytest.mark.parametrize(("capacity", "stays"), [(1, False), (4, True)])
async def test_a_replica_below_its_capacity_answers_its_conversations_next_turn_too(
    capacity: int, stays: bool
) -> None:
    fakes = [FakeBackend(), FakeBackend(), FakeBackend()]
    async with serving(fakes[0]) as one, serving(fakes[1]) as two, serving(fakes[2]) as three:
        urls = [one, two, three]
        client = backend(one, model="fake", replica_capacity=capacity)
        client.router.update(urls)
        home = client.router.pick("c1").url
        # One answer streams on the conversation's replica, none on the others: above 1.25
        # times the even share (a bound of one), within what a replica serves at once.
        opened = await client.open_stream(BODY, key="c1")
        assert client.router.load(home) == 1
        await client.complete(BODY, key="c1")
        answered = {url: len(fake.requests) for url, fake in zip(urls, fakes, strict=True)}
        assert (answered[home] == 2) is stays, answered
        await opened.aclose()
        await client.aclose()
