"""`tertulia chat`: a terminal client of the gateway, with streaming, /reset and /sources."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from tertulia.common.gateway_client import Source

HELP = "/reset forgets the conversation, /sources shows the last answer's sources, /quit leaves"


def chat(
    url: Annotated[
        str, typer.Option(envvar="TERTULIA_CHAT_URL", help="The gateway's address.")
    ] = "http://127.0.0.1:8080",
    key_file: Annotated[
        Path | None,
        typer.Option(envvar="TERTULIA_CHAT_KEY_FILE", help="A file holding the API key."),
    ] = None,
    conversation: Annotated[
        str | None, typer.Option(help="Continue this conversation id; a new one by default.")
    ] = None,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Ask one question, print, and exit.")
    ] = None,
) -> None:
    """Chat with a gateway from the terminal. The key may also be in TERTULIA_CHAT_KEY."""
    from tertulia.common.gateway_client import read_key

    key = read_key(key_file) if key_file else os.environ.get("TERTULIA_CHAT_KEY")
    conversation_id = conversation or f"cli:{uuid.uuid4().hex}"
    code = asyncio.run(_session(url, key, conversation_id, message))
    raise typer.Exit(code)


async def _session(url: str, key: str | None, conversation_id: str, once: str | None) -> int:
    from rich.console import Console

    from tertulia.common.gateway_client import GatewayClient, GatewayError

    console = Console(highlight=False)
    client = GatewayClient(url, key)
    sources: list[Source] = []
    try:
        if once is None:
            console.print(f"[dim]{url} · {HELP}[/]")
        while True:
            if once is not None:
                question = once
            else:
                try:
                    question = (await asyncio.to_thread(console.input, "[bold]you>[/] ")).strip()
                except (EOFError, KeyboardInterrupt):
                    console.print()
                    return 0
            if not question:
                continue
            if question in ("/quit", "/exit"):
                return 0
            if question == "/help":
                console.print(f"[dim]{HELP}[/]")
                continue
            if question == "/sources":
                _print_sources(console, sources)
                continue
            if question == "/reset":
                try:
                    await client.reset(conversation_id=conversation_id)
                except GatewayError as error:
                    console.print(f"[red]{error.message}[/]")
                    continue
                conversation_id, sources = f"cli:{uuid.uuid4().hex}", []
                console.print("[dim]a new conversation[/]")
                continue
            console.print("[bold]bot>[/] ", end="")
            try:
                async for event in client.stream_chat(question, conversation_id=conversation_id):
                    if event.kind == "meta":
                        sources = event.sources
                    elif event.kind == "token":
                        console.print(event.text, end="", markup=False, soft_wrap=True)
            except GatewayError as error:
                console.print(f"\n[red]{error.message}[/]")
                if once is not None:
                    return 1
                continue
            console.print()
            if sources:
                console.print(f"[dim]{len(sources)} sources: /sources to list them[/]")
            if once is not None:
                _print_sources(console, sources)
                return 0
    finally:
        await client.aclose()


def _print_sources(console: Console, sources: list[Source]) -> None:
    if not sources:
        console.print("[dim]no sources for the last answer[/]")
    for number, source in enumerate(sources, start=1):
        console.print(f"[dim][{number}] {source.source} — {source.label()} ({source.score:.2f})[/]")
