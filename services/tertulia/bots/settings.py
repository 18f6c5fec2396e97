"""The bots' settings, from TERTULIA_BOT_* variables; tokens are files from mounted Secrets."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tertulia.common.logging import protect


class MissingSecret(RuntimeError):
    """A token file is absent or empty; the message names the file, never a value."""


class BotSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TERTULIA_BOT_", extra="ignore")

    gateway_url: str = Field("http://127.0.0.1:8080", description="The gateway's base URL.")
    gateway_key_file: Path | None = Field(None, description="File holding the gateway API key.")
    secrets_dir: Path = Field(
        Path("/etc/tertulia/secrets"), description="Folder of token files, one per Secret key."
    )
    mode: str | None = Field(
        None, description="slack: socket | events; telegram: polling | webhook."
    )
    health_host: str = Field("0.0.0.0", description="Address of /healthz, /readyz, /metrics.")  # noqa: S104 - probes come from the kubelet
    health_port: int = Field(8081, ge=0, le=65535)
    webhook_host: str = Field("0.0.0.0", description="Address the webhook listens on.")  # noqa: S104 - the platform calls in
    webhook_port: int = Field(8443, ge=0, le=65535)
    webhook_url: str | None = Field(None, description="Telegram: the public webhook URL.")
    api_url: str | None = Field(
        None,
        description="The platform's API base URL, for a self-hosted Bot API server or a test "
        "double; the platform's own by default.",
    )
    discord_gateway_url: str | None = Field(
        None, description="Discord: the gateway WebSocket URL; Discord's own by default."
    )
    message_limit: int | None = Field(
        None, ge=100, description="Split answers shorter than the platform's limit."
    )
    stream_interval: float = Field(
        1.0, gt=0, description="Seconds between updates of an answer being streamed."
    )
    waiting_notice_seconds: float = Field(
        15.0,
        gt=0,
        description="Seconds without a first word of the answer (a model scaled to zero "
        "waking, a busy one) after which the bot says, once, that the answer is coming.",
    )
    log_level: str = "info"
    log_content: bool = Field(False, description="Log message text; for debugging only.")

    def secret(self, name: str) -> str:
        path = self.secrets_dir / name
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            raise MissingSecret(f"the token file {path} does not exist") from None
        if not value:
            raise MissingSecret(f"the token file {path} is empty")
        # No log line of this process may carry it (the Telegram SDK's URLs do).
        protect(value)
        return value

    def optional_secret(self, name: str) -> str | None:
        try:
            return self.secret(name)
        except MissingSecret:
            return None

    def limit(self, platform_limit: int) -> int:
        return min(platform_limit, self.message_limit or platform_limit)
