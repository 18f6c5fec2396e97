"""The gateway as deployed: its own processes, in front of the real llama.cpp server, with
memory and rate limits in the real Redis shared by two replicas.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.testbed.pki import issue, write_pki
from tests.testbed.process import ManagedProcess, eventually, free_port
from tests.testbed.servers import (
    SENTINEL_NAME,
    SentinelGroup,
    start_fake_backend,
    start_gateway,
    start_llama_server,
    start_redis,
    start_sentinel_group,
)

# Short answers keep the CPU model quick; temperature 0 makes prompts comparable.
SETTINGS = {"MAX_TOKENS": "12", "TEMPERATURE": "0", "RATE_LIMIT__ENABLED": "false"}


def read_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    event = "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield event, json.loads(line.removeprefix("data: "))
            event = "message"


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, llama_url: str, redis_url: str
) -> Iterator[tuple[str, str]]:
    """Two gateway replicas on one Redis, in front of the session's llama.cpp server."""
    workdir = tmp_path_factory.mktemp("gateways")
    settings = {**SETTINGS, "BACKEND__URL": llama_url, "REDIS_URL": redis_url}
    first, first_url = start_gateway(workdir, settings, name="gateway-a")
    second, second_url = start_gateway(workdir, settings, name="gateway-b")
    yield first_url, second_url
    first.stop()
    second.stop()


def test_chat_stream_delivers_the_models_tokens_end_to_end(replicas: tuple[str, str]) -> None:
    gateway, _ = replicas
    body = {"message": "Write about the harbour at night.", "conversation_id": uuid.uuid4().hex}
    with httpx.stream("POST", f"{gateway}/chat/stream", json=body, timeout=120) as response:
        assert response.status_code == 200
        events = list(read_events(response))

    kinds = [kind for kind, _ in events]
    assert kinds[0] == "meta"
    assert kinds[-1] == "done"
    tokens = [data["text"] for kind, data in events if kind == "token"]
    assert len(tokens) >= 2
    done = events[-1][1]
    assert done["response"] == "".join(tokens)
    assert done["response"].strip()
    metrics = httpx.get(f"{gateway}/metrics", timeout=10).text
    assert 'tertulia_gateway_tokens_total{direction="completion"}' in metrics


def test_two_replicas_share_one_memory(replicas: tuple[str, str]) -> None:
    first, second = replicas
    conversation = uuid.uuid4().hex

    httpx.post(
        f"{first}/chat",
        json={"message": "My boat is called Gaviota.", "conversation_id": conversation},
        timeout=120,
    )
    httpx.post(
        f"{second}/chat",
        json={"message": "What is my boat called?", "conversation_id": conversation},
        timeout=120,
    )
    seen_by_first = httpx.get(f"{first}/conversations/{conversation}", timeout=10).json()["turns"]

    assert [turn["role"] for turn in seen_by_first] == ["user", "assistant", "user", "assistant"]
    assert seen_by_first[0]["content"] == "My boat is called Gaviota."
    assert seen_by_first[2]["content"] == "What is my boat called?"


def test_no_history_crosses_between_users(replicas: tuple[str, str]) -> None:
    gateway, _ = replicas
    shared_id = uuid.uuid4().hex
    private = "Ana's locker code is 4471 and her boat is the Gaviota."

    stored = httpx.post(
        f"{gateway}/chat",
        json={"message": private, "conversation_id": shared_id, "user": "ana"},
        timeout=120,
    )
    assert stored.status_code == 200
    # Ana's turn is there, and she reads it back: what Bob must not see exists.
    ana_history = httpx.get(
        f"{gateway}/conversations/{shared_id}", params={"user": "ana"}, timeout=10
    ).json()
    assert ana_history["turns"][0]["content"] == private
    bob = httpx.post(
        f"{gateway}/chat",
        json={"message": "Hi there", "conversation_id": shared_id, "user": "bob"},
        timeout=120,
    ).json()
    fresh = httpx.post(
        f"{gateway}/chat",
        json={"message": "Hi there", "conversation_id": uuid.uuid4().hex, "user": "carl"},
        timeout=120,
    ).json()
    bob_history = httpx.get(
        f"{gateway}/conversations/{shared_id}", params={"user": "bob"}, timeout=10
    ).json()

    # Bob's prompt is exactly as long as a stranger's first prompt: none of Ana's turns in it.
    assert bob["usage"]["prompt_tokens"] == fresh["usage"]["prompt_tokens"]
    assert [turn["content"] for turn in bob_history["turns"]][:1] == ["Hi there"]
    assert private not in json.dumps(bob_history)


def test_one_rate_limit_holds_across_two_replicas(
    tmp_path: Path, llama_url: str, redis_url: str
) -> None:
    settings = {
        **SETTINGS,
        "BACKEND__URL": llama_url,
        "REDIS_URL": redis_url,
        "MAX_TOKENS": "1",
        "RATE_LIMIT__ENABLED": "true",
        "RATE_LIMIT__BURST": "3",
        "RATE_LIMIT__REQUESTS_PER_MINUTE": "1",
    }
    first, first_url = start_gateway(tmp_path, settings, name="limited-a")
    second, second_url = start_gateway(tmp_path, settings, name="limited-b")
    try:
        user = uuid.uuid4().hex
        statuses = [
            httpx.post(f"{url}/chat", json={"message": "hi", "user": user}, timeout=120).status_code
            for url in (first_url, second_url, first_url, second_url, first_url)
        ]
        refused = httpx.post(
            f"{second_url}/chat", json={"message": "hi", "user": user}, timeout=120
        )
    finally:
        first.stop()
        second.stop()

    assert statuses == [200, 200, 200, 429, 429]
    assert int(refused.headers["retry-after"]) >= 1


def test_a_backend_killed_mid_stream_ends_the_stream_with_an_error_event(tmp_path: Path) -> None:
    llama, own_llama_url = start_llama_server(tmp_path / "llama")
    gateway, gateway_url = start_gateway(
        tmp_path, {"BACKEND__URL": own_llama_url, "MAX_TOKENS": "400", "BACKEND__RETRIES": "0"}
    )
    try:
        events: list[tuple[str, dict[str, Any]]] = []
        started = time.monotonic()
        body = {"message": "Tell me a very long story about the sea."}
        with httpx.stream("POST", f"{gateway_url}/chat/stream", json=body, timeout=60) as response:
            for kind, data in read_events(response):
                events.append((kind, data))
                if kind == "token" and len(events) == 3:
                    kill(llama)
        outage = httpx.post(f"{gateway_url}/chat", json={"message": "hello?"}, timeout=30)
        ready = httpx.get(f"{gateway_url}/readyz", timeout=30)
    finally:
        gateway.stop()
        llama.stop()

    assert time.monotonic() - started < 60, "the stream hung after the backend died"
    assert events[-1][0] == "error"
    assert events[-1][1]["code"] == "stream_interrupted"
    assert not any(kind == "done" for kind, _ in events)
    assert outage.status_code == 503
    assert outage.headers["retry-after"] == "5"
    assert ready.status_code == 503
    assert ready.json()["checks"]["backend"]["status"] == "down"


def test_a_client_that_goes_away_cancels_the_upstream_request(tmp_path: Path) -> None:
    backend, backend_url = start_fake_backend(
        tmp_path, "--reply", " ".join(["wave"] * 400), "--token-delay", "0.02"
    )
    gateway, gateway_url = start_gateway(tmp_path, {"BACKEND__URL": backend_url})
    fake_state = backend_url.removesuffix("/v1") + "/fake/requests"
    try:
        with httpx.stream(
            "POST", f"{gateway_url}/chat/stream", json={"message": "hi"}, timeout=30
        ) as response:
            tokens = 0
            for kind, _ in read_events(response):
                tokens += kind == "token"
                if tokens == 3:
                    break
        deadline = time.monotonic() + 10
        while httpx.get(fake_state, timeout=5).json()["streams_cancelled"] == 0:
            assert time.monotonic() < deadline, "the backend kept generating for a client that left"
            time.sleep(0.1)
    finally:
        gateway.stop()
        backend.stop()


def kill(process: ManagedProcess) -> None:
    process.popen.send_signal(signal.SIGKILL)
    process.popen.wait()


def test_a_redis_with_a_password_holds_memory_for_the_gateway_that_has_it(
    tmp_path: Path, llama_url: str
) -> None:
    password = "redis-password-" + uuid.uuid4().hex
    redis_process, redis_url = start_redis(tmp_path / "redis", password=password)
    (tmp_path / "password").write_text(password + "\n")
    try:
        settings = {**SETTINGS, "BACKEND__URL": llama_url, "REDIS_URL": redis_url}
        with_password, url = start_gateway(
            tmp_path, {**settings, "REDIS_PASSWORD_FILE": str(tmp_path / "password")}, name="kept"
        )
        try:
            body = {"message": "Hello", "conversation_id": "locked", "user": "ana"}
            assert httpx.post(f"{url}/chat", json=body, timeout=120).status_code == 200
            turns = httpx.get(f"{url}/conversations/locked", params={"user": "ana"}, timeout=10)
            assert [turn["role"] for turn in turns.json()["turns"]] == ["user", "assistant"]
        finally:
            with_password.stop()
        # Without it, its store refuses it: the gateway answers without memory, and says so.
        without, url = start_gateway(tmp_path, settings, name="refused")
        try:
            assert_store_refuses(url)
        finally:
            without.stop()
    finally:
        redis_process.stop()


def assert_store_refuses(url: str) -> None:
    """The gateway at `url` cannot use its Redis: ready but degraded, answering without
    memory."""
    ready = httpx.get(f"{url}/readyz", timeout=30)
    assert (ready.status_code, ready.json()["status"]) == (200, "degraded")
    assert ready.json()["checks"]["store"]["status"] == "down"
    body = {"message": "Hello", "conversation_id": "locked", "user": "ana"}
    answered = httpx.post(f"{url}/chat", json=body, timeout=120)
    assert answered.status_code == 200
    assert answered.json()["notice"]


def test_an_external_redis_is_reached_over_tls_with_its_password(
    tmp_path: Path, llama_url: str
) -> None:
    pki = write_pki(tmp_path / "pki")
    cert, key = issue(pki, tmp_path / "pki", "redis", "redis", server_names=("127.0.0.1",))
    password = "redis-password-" + uuid.uuid4().hex
    port = free_port()
    redis_process, _ = start_redis(
        tmp_path / "redis",
        password=password,
        port=port,
        options=[
            "--tls-port", str(port), "--port", "0", "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(pki.ca_cert),
            "--tls-auth-clients", "no",
        ],
    )  # fmt: skip
    (tmp_path / "password").write_text(password + "\n")
    secure = {
        **SETTINGS,
        "BACKEND__URL": llama_url,
        "REDIS_URL": f"rediss://127.0.0.1:{port}/0",
        "REDIS_PASSWORD_FILE": str(tmp_path / "password"),
        "REDIS_CA_FILE": str(pki.ca_cert),
    }
    try:
        gateway, url = start_gateway(tmp_path, secure, name="tls")
        try:
            assert httpx.get(f"{url}/readyz", timeout=10).json()["status"] == "ready"
            body = {"message": "Hello", "conversation_id": "tls", "user": "ana"}
            assert httpx.post(f"{url}/chat", json=body, timeout=120).json()["notice"] is None
            turns = httpx.get(f"{url}/conversations/tls", params={"user": "ana"}, timeout=10)
            assert [turn["role"] for turn in turns.json()["turns"]] == ["user", "assistant"]
        finally:
            gateway.stop()
        # Each of TLS, the server's CA and the password is needed.
        for name, lacking in (
            ("plain", {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "REDIS_CA_FILE": ""}),
            ("untrusted", {"REDIS_CA_FILE": ""}),
            ("no-password", {"REDIS_PASSWORD_FILE": ""}),
        ):
            settings = {k: v for k, v in {**secure, **lacking}.items() if v}
            refused, url = start_gateway(tmp_path, settings, name=f"tls-{name}")
            try:
                assert_store_refuses(url)
            finally:
                refused.stop()
    finally:
        redis_process.stop()


def _gateway_behind_sentinels(
    tmp_path: Path, name: str
) -> tuple[SentinelGroup, str, Callable[[], None]]:
    """A Sentinel group, and a gateway whose memory is its primary; the URL, and a stop."""
    password = "redis-password-" + uuid.uuid4().hex
    group = start_sentinel_group(tmp_path / "redis", password)
    backend, backend_url = start_fake_backend(tmp_path, "--reply", "Noted.")
    (tmp_path / "password").write_text(password + "\n")
    settings = {
        **SETTINGS,
        "BACKEND__URL": backend_url,
        "REDIS_URL": group.url,
        "REDIS_PASSWORD_FILE": str(tmp_path / "password"),
    }
    gateway, url = start_gateway(tmp_path, settings, name=name)

    def stop() -> None:
        gateway.stop()
        backend.stop()
        group.stop()

    return group, url, stop


def test_a_conversation_follows_its_redis_primary_through_a_sentinel_failover(
    tmp_path: Path,
) -> None:
    group, url, stop = _gateway_behind_sentinels(tmp_path, "sentinel")
    try:
        assert httpx.get(f"{url}/readyz", timeout=10).json()["status"] == "ready"
        for turn in range(1, 6):
            body = {"message": f"turn {turn}", "conversation_id": "ha", "user": "ana"}
            answered = httpx.post(f"{url}/chat", json=body, timeout=30)
            assert (answered.status_code, answered.json()["notice"]) == (200, None)
        # Both replicas hold every write so far: the failover has the five turns to keep.
        first = group.primary_in_step()
        kill(group.servers[first])

        deadline = time.monotonic() + 30
        while group.primary() in (first, None):
            assert time.monotonic() < deadline, "no replica was promoted"
            time.sleep(0.2)
        promoted = group.primary()
        assert promoted in group.servers and promoted != first

        # The sixth turn reaches the new primary (after at most a short outage, which the
        # gateway reports as a 503 or a notice) and sees the first five.
        body = {"message": "turn 6", "conversation_id": "ha", "user": "ana"}
        deadline = time.monotonic() + 30
        while True:
            answered = httpx.post(f"{url}/chat", json=body, timeout=30)
            if answered.status_code == 200 and answered.json()["notice"] is None:
                break
            assert time.monotonic() < deadline, answered.text
            time.sleep(1)
        turns = httpx.get(f"{url}/conversations/ha", params={"user": "ana"}, timeout=10)
        said = [t["content"] for t in turns.json()["turns"] if t["role"] == "user"]
        assert said == [f"turn {turn}" for turn in range(1, 7)]
        assert httpx.get(f"{url}/readyz", timeout=10).json()["checks"]["store"]["status"] == "up"
    finally:
        stop()


def test_a_switchover_with_the_old_primary_still_up_costs_no_turn(tmp_path: Path) -> None:
    """A failover the Sentinels are asked for (as a Redis pod's preStop asks before it stops)
    leaves the old primary up, a replica: the gateway's pooled connections to it are refused
    their writes (READONLY), and the turn is sent again to the new primary, not the old one."""
    group, url, stop = _gateway_behind_sentinels(tmp_path, "switchover")
    password = group.password
    try:
        body = {"message": "turn 1", "conversation_id": "ha", "user": "ana"}
        answered = httpx.post(f"{url}/chat", json=body, timeout=30)
        assert (answered.status_code, answered.json()["notice"]) == (200, None)
        # The replicas hold the first turn, as the preStop waits for before it hands over.
        first = group.primary_in_step()
        # As the preStop hands over: a failover, and once every Sentinel's record of the
        # primary (what clients read) is the new one, the old primary follows it.
        sentinels = [redis.Redis(port=port, password=password) for port in group.sentinels]
        assert sentinels[0].execute_command("SENTINEL", "FAILOVER", SENTINEL_NAME)
        deadline = time.monotonic() + 30
        while True:
            views = [s.sentinel_master(SENTINEL_NAME) for s in sentinels]
            if all(view["port"] != first and "failover" not in view["flags"] for view in views):
                break
            assert time.monotonic() < deadline, "the Sentinels did not switch over"
            time.sleep(0.2)
        promoted = views[0]["port"]
        with redis.Redis(port=first, password=password) as old:
            old.execute_command("REPLICAOF", "127.0.0.1", promoted)
        body = {"message": "turn 2", "conversation_id": "ha", "user": "ana"}
        answered = httpx.post(f"{url}/chat", json=body, timeout=30)
        assert (answered.status_code, answered.json()["notice"]) == (200, None)
        turns = httpx.get(f"{url}/conversations/ha", params={"user": "ana"}, timeout=10)
        said = [t["content"] for t in turns.json()["turns"] if t["role"] == "user"]
        assert said == ["turn 1", "turn 2"]
    finally:
        stop()


def test_a_chat_turn_costs_two_redis_round_trips(tmp_path: Path) -> None:
    """With memory and the rate limit on, a turn of a known conversation is one round trip
    before the answer (the buckets and the history) and one after (the new turns), on /chat
    and /chat/stream alike; counted by Redis's MONITOR, which tells a client's commands from
    the ones its scripts run."""
    redis_process, redis_url = start_redis(tmp_path / "redis")
    backend, backend_url = start_fake_backend(tmp_path, "--reply", "Noted.")
    gateway, url = start_gateway(
        tmp_path, {"BACKEND__URL": backend_url, "REDIS_URL": redis_url}, name="counted"
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    marker = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        body = {"message": "Hello", "conversation_id": "counted", "user": "ana"}
        assert httpx.post(f"{url}/chat", json=body, timeout=30).status_code == 200
        marker.ping()  # connected before the count starts
        with client.monitor() as monitor:
            assert httpx.post(f"{url}/chat", json=body, timeout=30).status_code == 200
            with httpx.stream("POST", f"{url}/chat/stream", json=body, timeout=30) as response:
                assert [kind for kind, _ in read_events(response)][-1] == "done"
            marker.echo("end of the turns")
            sent = []
            while (command := monitor.next_command())["command"] != "ECHO end of the turns":
                if command["client_type"] != "lua":
                    sent.append(command["command"].split()[0])
        assert sent == ["EVALSHA"] * 4, sent
        turns = httpx.get(f"{url}/conversations/counted", params={"user": "ana"}, timeout=10)
        assert len(turns.json()["turns"]) == 6
    finally:
        client.close()
        marker.close()
        gateway.stop()
        backend.stop()
        redis_process.stop()


def test_metrics_on_their_own_port_and_sigterm_stops_both_servers(tmp_path: Path) -> None:
    backend, backend_url = start_fake_backend(tmp_path, "--reply", "Fine.")
    metrics_port = free_port()
    gateway, gateway_url = start_gateway(
        tmp_path, {"BACKEND__URL": backend_url, "METRICS_PORT": str(metrics_port)}
    )
    try:
        assert httpx.post(f"{gateway_url}/chat", json={"message": "hi"}, timeout=30).is_success
        assert httpx.get(f"{gateway_url}/metrics", timeout=5).status_code == 404
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert 'tertulia_gateway_requests_total{route="/chat",status="200"} 1.0' in metrics.text
        gateway.popen.send_signal(signal.SIGTERM)
        # One SIGTERM ends the process (uvicorn re-raises it once shut down, so the exit
        # says so): the metrics server does not keep it alive.
        assert gateway.popen.wait(timeout=20) in (0, -signal.SIGTERM)
        for port in (metrics_port, int(gateway_url.rsplit(":", 1)[1])):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        gateway.stop()
        backend.stop()


def test_sigterm_drains_the_gateway_and_every_answer_in_flight_completes(
    tmp_path: Path, instruct_url: str
) -> None:
    streams = 16
    gateway, url = start_gateway(
        tmp_path,
        {
            **SETTINGS,
            # Answers long enough that most are still streaming when the signal comes: the
            # model server answers four at once, the others wait their turn there.
            "MAX_TOKENS": "64",
            "BACKEND__URL": instruct_url,
            "SHUTDOWN__DRAIN_DELAY_SECONDS": "3",
            # The last of 17 answers waits for the 16 before it: on a CPU shared with the other
            # tiers, minutes before its first token (a 504 after the default 120 s), as a user
            # serving a slow model sets these.
            "BACKEND__READ_TIMEOUT": "600",
            "SHUTDOWN__GRACE_SECONDS": "600",
        },
        name="draining-gateway",
    )
    finished: list[tuple[int, list[tuple[str, dict[str, Any]]]]] = []

    def ask(index: int) -> None:
        body = {"message": f"Tell me about boat number {index}.", "conversation_id": f"d{index}"}
        with httpx.stream("POST", f"{url}/chat/stream", json=body, timeout=600) as response:
            finished.append((response.status_code, list(read_events(response))))

    def in_flight() -> float:
        """Requests the gateway has sent to the model server and not yet seen end."""
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("tertulia_gateway_backend_in_flight{")
        )

    workers = [threading.Thread(target=ask, args=(index,)) for index in range(streams)]
    try:
        for worker in workers:
            worker.start()
        # Every request on its way to the model server (which answers four at once, the
        # rest waiting their turn there) before the signal.
        eventually(lambda: in_flight() >= streams, timeout=60, what="every request upstream")
        gateway.popen.send_signal(signal.SIGTERM)
        # The signal landed mid-way: most answers were still to come.
        in_flight_at_signal = streams - len(finished)
        assert in_flight_at_signal >= streams // 2

        # Draining: out of its Service, still answering, asking clients to reconnect elsewhere.
        readiness = httpx.get(f"{url}/readyz", timeout=10)
        assert (readiness.status_code, readiness.json()["status"]) == (503, "draining")
        late = httpx.post(f"{url}/chat", json={"message": "One more, please."}, timeout=600)
        assert late.status_code == 200
        assert late.json()["response"].strip()
        assert late.headers["connection"] == "close"

        # Past the delay it stops listening, and finishes what it had.
        time.sleep(3.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)
        for worker in workers:
            worker.join(timeout=600)
        assert len(finished) == streams
        for status, events in finished:
            assert status == 200
            assert events[-1][0] == "done"
            tokens = "".join(data["text"] for kind, data in events if kind == "token")
            assert tokens.strip()
            assert events[-1][1]["response"] == tokens
        assert gateway.popen.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        gateway.stop()
