"""The gateway's settings: environment variables over a mounted YAML file over the defaults.

The operator renders the file into a ConfigMap mounted at `/etc/tertulia/gateway.yaml`;
`TERTULIA_GATEWAY_CONFIG_FILE` points elsewhere. Environment variables use the prefix
`TERTULIA_GATEWAY_` and `__` between nested names (`TERTULIA_GATEWAY_MEMORY__MAX_TURNS=10`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from tertulia.knowledge.settings import KnowledgeSettings

CONFIG_FILE_VARIABLE = "TERTULIA_GATEWAY_CONFIG_FILE"
DEFAULT_CONFIG_FILE = Path("/etc/tertulia/gateway.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendSettings(_Section):
    """The OpenAI-compatible model server: vLLM, Ollama (its /v1 API) or llama.cpp."""

    url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8000/v1"), description="Base URL, ending in /v1."
    )
    model: str = Field("", description="Model id sent upstream; empty: the first /v1/models lists.")
    api_key_file: Path | None = Field(None, description="File holding a bearer token, if needed.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a connection.")
    read_timeout: float = Field(
        120.0, gt=0, description="Seconds to wait for the first token, and between tokens."
    )
    retries: int = Field(2, ge=0, le=10, description="Retries when a connection cannot be opened.")
    max_connections: int = Field(1024, ge=1, description="Pooled connections to the backend.")
    keepalive_seconds: float = Field(
        4.0,
        gt=0,
        description="Seconds a pooled connection may idle before the gateway closes it: less "
        "than the model server waits (5 s in vLLM's and llama.cpp's servers), so no request "
        "goes out on a connection the server is closing.",
    )
    replicas: str = Field(
        "",
        description="A DNS name listing the model server's ready replicas (a headless "
        "Service's), or several names or addresses, comma separated, looked up every "
        "`replicas_refresh_seconds`: requests then go to a replica chosen by `routing`, at "
        "`url`'s port and path. Empty: every request goes to `url`.",
    )
    replicas_refresh_seconds: float = Field(
        2.0, gt=0, le=60, description="Seconds between lookups of `replicas`."
    )
    routing: Literal["affinity", "round-robin"] = Field(
        "affinity",
        description="`affinity`: every turn of a conversation (the OpenAI API's: its "
        "X-Session-ID header, else its `user`) to the same replica, whose prefix cache holds "
        "its history, unless that replica carries over 1.25 times its share of the requests "
        "in flight and `replica_capacity` already; `round-robin`: each request to the next "
        "replica.",
    )
    tools: bool = Field(
        False,
        description="The model calls tools (the ChatBot's `model.tools.enabled`): requests "
        "with `tools`, `tool_choice` and tool messages pass through to it; without it they are "
        "refused with 422.",
    )
    replica_capacity: int = Field(
        4,
        ge=1,
        le=10000,
        description="Requests one replica serves at once without slowing (llama.cpp's slots, "
        "4 by default; the autoscaler's target): with fewer in flight, a replica always takes "
        "its own conversations' turns, however idle the others are.",
    )


class KubernetesSettings(_Section):
    """How the gateway reaches the Kubernetes API: its pod's ServiceAccount by default."""

    api_url: str = Field(
        "",
        description="The API server's URL; empty: https://$KUBERNETES_SERVICE_HOST:"
        "$KUBERNETES_SERVICE_PORT, as every pod is told.",
    )
    token_file: Path = Field(
        Path("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        description="A bearer token, read again for each request (kubelet rotates it).",
    )
    ca_file: Path | None = Field(
        Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
        description="The CA that signed the API server's certificate.",
    )


class AutoscalingSettings(_Section):
    """The model's replicas follow the requests in flight, counted across every gateway
    replica (through Redis), by the ChatBot's scale subresource; at zero replicas a request
    is held until one is ready. See autoscale.py."""

    enabled: bool = False
    chatbot: str = Field("", description="The ChatBot whose scale subresource is moved.")
    namespace: str = Field("", description="Its namespace.")
    min_replicas: int = Field(1, ge=0, le=64, description="Fewest replicas; 0 scales to zero.")
    max_replicas: int = Field(4, ge=1, le=64, description="Most replicas.")
    target_in_flight: float = Field(
        4.0, gt=0, description="Requests in flight (or waiting) per replica to aim for."
    )
    scale_down_delay_seconds: float = Field(
        300.0,
        ge=0,
        description="Replicas go only once the load has called for fewer for this long: the "
        "most replicas any moment of this window asked for is what is kept.",
    )
    interval_seconds: float = Field(
        2.0, gt=0, le=60, description="Seconds between the autoscaler's decisions."
    )
    queue_length: int = Field(
        100, ge=0, description="Requests one gateway holds while no replica is ready."
    )
    queue_timeout_seconds: float = Field(
        240.0,
        gt=0,
        description="How long a held request waits for a replica before it is answered 503 "
        "with Retry-After; longer than a replica takes to load its weights.",
    )
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    @model_validator(mode="after")
    def _sane(self) -> AutoscalingSettings:
        if self.enabled and not (self.chatbot and self.namespace):
            raise ValueError("autoscaling needs the ChatBot's name and namespace")
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.min_replicas must not exceed max_replicas")
        return self


class MemorySettings(_Section):
    """Per-conversation history, kept in Redis."""

    max_turns: int = Field(20, ge=0, le=1000, description="Turns (a message and its reply) kept.")
    max_tokens: int = Field(
        2048, ge=0, description="Token budget of the history in a prompt; oldest turns go first."
    )
    ttl_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="A conversation idle this long is forgotten."
    )
    when_unavailable: Literal["answer", "refuse"] = Field(
        "answer",
        description="While Redis cannot be reached: `answer` without the conversation's "
        "history, saying so, and without remembering the turn; `refuse` with 503 and "
        "Retry-After.",
    )


class RateLimitSettings(_Section):
    """Token buckets in Redis, shared by every gateway replica."""

    enabled: bool = True
    requests_per_minute: float = Field(20.0, gt=0, description="Sustained rate for one user.")
    burst: int = Field(5, ge=1, description="Requests one user may make at once.")
    key_requests_per_minute: float = Field(
        600.0, gt=0, description="Sustained rate for one API key, all its users together."
    )
    key_burst: int = Field(50, ge=1, description="Requests one API key may make at once.")
    when_unavailable: Literal["allow", "refuse"] = Field(
        "allow",
        description="While Redis cannot be reached: `allow` requests unlimited (fail open), "
        "or `refuse` them with 503 and Retry-After (fail closed).",
    )


class EventClaimSettings(_Section):
    """The bots' event claims (/events), bounded so no flood of event ids can fill Redis."""

    claims_per_minute: float = Field(
        600.0, gt=0, description="Sustained rate of claims for one API key."
    )
    burst: int = Field(100, ge=1, description="Claims one API key may make at once.")
    max_claims_per_key: int = Field(
        10_000,
        ge=100,
        description="Claims kept per API key; past it, those soonest to expire go first.",
    )


class ModerationSettings(_Section):
    """Blocked terms on input and output, and an optional guard model."""

    blocked_terms: list[str] = Field(
        default_factory=list,
        description="Matched as whole words in every text the model is given and in its "
        "answers, after folding case, width, accents and invisible characters.",
    )
    refusal: str = Field(
        "Sorry, I can't help with that.", description="What a blocked answer is replaced with."
    )
    guard_url: HttpUrl | None = Field(
        None, description="OpenAI-compatible URL of a guard model (Llama Guard style)."
    )
    guard_model: str = Field("", description="Model id of the guard model.")
    guard_failure: Literal["refuse", "allow"] = Field(
        "refuse",
        description="When the guard model cannot answer: `refuse` the request with 503 and "
        "Retry-After (fail closed), or `allow` it unchecked by the guard (fail open); "
        "blocked terms are checked either way.",
    )


class LimitSettings(_Section):
    """Input limits; a request over them is refused with 413 and the limit it broke."""

    max_message_chars: int = Field(8000, ge=1)
    max_context_chars: int = Field(16000, ge=0)
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    max_messages: int = Field(200, ge=1, description="Messages in one OpenAI-style request.")


class KnowledgeBaseSettings(KnowledgeSettings):
    """Retrieval from the knowledge base (Weaviate); off unless configured."""

    enabled: bool = False
    max_upload_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest body the admin ingest endpoint takes."
    )


class ShutdownSettings(_Section):
    """What the gateway does on SIGTERM (see drain.py): serve on while it leaves its Service's
    endpoints, then finish the answers in flight."""

    drain_delay_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="Seconds the gateway keeps serving after SIGTERM, failing /readyz, so the "
        "endpoints and load balancers stop sending to it before it stops listening.",
    )
    grace_seconds: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Seconds the answers in flight may take to finish once it stops listening; "
        "longer than the longest answer. Whatever is still streaming then is cut.",
    )


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TERTULIA_GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the gateway answers to (the Host header, its port aside); "
        "any other is refused with 400 before anything else. Empty: any. Local mode sets "
        "127.0.0.1 and localhost, so a web page on another name that resolves to this "
        "machine (DNS rebinding) cannot use the gateway.",
    )
    model_name: str = Field("tertulia", description="The model id clients see at /v1/models.")
    system_prompt: str = "You are a helpful assistant. Answer clearly and briefly."
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1, le=32768, description="Longest reply, in tokens.")
    redis_url: str | None = Field(
        None,
        pattern=r"^(rediss?://[^\s]+|redis\+sentinel://[^/\s]+:[0-9]+(,[^/\s]+:[0-9]+)*/[^/\s]+(/[0-9]+)?)$",
        description="Memory and rate limits; without it they live in this process only. "
        "redis://HOST:PORT/DB, rediss:// for TLS, or "
        "redis+sentinel://HOST:PORT[,HOST:PORT...]/NAME[/DB]: the primary that these Redis "
        "Sentinels know as NAME, followed through a failover.",
    )
    redis_password_file: Path | None = Field(
        None, description="A file holding Redis's password (a mounted Secret), if it has one."
    )
    redis_ca_file: Path | None = Field(
        None,
        description="A PEM file of the CA that signed a TLS Redis's certificate (a `rediss://` "
        "URL); the system's CAs when unset.",
    )
    api_keys_dir: Path | None = Field(
        None,
        description="A mounted Secret: one file per identity, holding its API key. "
        "Without it the gateway needs no key (local use only).",
    )
    user_prefixes: dict[str, str] = Field(
        default_factory=dict,
        description="API key identities bound to the users they may act for: each may only "
        "name a `user` that starts with its prefix ({'slack': 'slack:'}: the Slack bot's key "
        "cannot read a Telegram user's history).",
    )
    admin_identities: list[str] = Field(
        default_factory=lambda: ["admin"],
        description="API key identities allowed the /admin API (knowledge base ingestion).",
    )
    web_chat: bool = Field(True, description="Serve the web chat page at /.")
    web_chat_identity: str = Field(
        "web",
        min_length=1,
        description="The API key identity whose key opens web chat sessions (any browser "
        "when keys are off): each browser then acts as its own user, `web:<id>`. No other "
        "key opens one, the admin's least of all.",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve /metrics and /stats on this port alone, not on the public one "
        "(which an Ingress exposes); on the public port when unset.",
    )
    api_docs: bool = Field(
        True, description="Serve the API's documentation at /docs, /redoc and /openapi.json."
    )
    log_level: str = "info"
    log_content: bool = Field(False, description="Log message text; for debugging only.")
    backend: BackendSettings = Field(default_factory=BackendSettings)
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    events: EventClaimSettings = Field(default_factory=EventClaimSettings)
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    knowledge_base: KnowledgeBaseSettings = Field(default_factory=KnowledgeBaseSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)

    @model_validator(mode="after")
    def _tls_for_a_ca(self) -> GatewaySettings:
        if self.redis_ca_file is not None and not (self.redis_url or "").startswith("rediss://"):
            raise ValueError("redis_ca_file is for a TLS Redis: redis_url must be rediss://")
        if self.autoscaling.enabled and not self.backend.replicas:
            raise ValueError("autoscaling needs backend.replicas, to see the replicas it makes")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        named = os.environ.get(CONFIG_FILE_VARIABLE)
        config_file = Path(named) if named else DEFAULT_CONFIG_FILE
        if named and not config_file.is_file():
            raise FileNotFoundError(f"{CONFIG_FILE_VARIABLE} names {named}, which is not a file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


@functools.cache
def get_settings() -> GatewaySettings:
    """The process's settings, read once; tests swap them with `dependency_overrides`."""
    return GatewaySettings()
