"""`tertulia bot slack|discord|telegram`: run one platform's bot."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="The chat platform bots; configured by TERTULIA_BOT_* variables.", no_args_is_help=True
)


@app.command()
def slack() -> None:
    """Slack through Socket Mode (TERTULIA_BOT_MODE=socket) or the Events API (events)."""
    from tertulia.bots import slack as platform
    from tertulia.bots.runtime import run_bot

    run_bot("slack", platform.serve)


@app.command()
def discord() -> None:
    """Discord through its gateway; mentions, direct messages, /ask and /reset."""
    from tertulia.bots import discord as platform
    from tertulia.bots.runtime import run_bot

    run_bot("discord", platform.serve)


@app.command()
def telegram() -> None:
    """Telegram by long polling (TERTULIA_BOT_MODE=polling) or a webhook (webhook)."""
    from tertulia.bots import telegram as platform
    from tertulia.bots.runtime import run_bot

    run_bot("telegram", platform.serve)
