"""`tertulia gateway serve`: run the gateway with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="The chat gateway.", no_args_is_help=True)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [settings: host].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [settings: port].")] = None,
) -> None:
    """Serve the chat API; settings come from TERTULIA_GATEWAY_* and the config file."""
    from tertulia.common.logging import configure_logging
    from tertulia.gateway.serving import serve as run
    from tertulia.gateway.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, log_content=settings.log_content)
    run(settings, host or settings.host, port or settings.port)
