"""The web chat at `/`: one self-contained page that streams answers from `/chat/stream`,
shows each answer's sources, and resets the conversation. Off with `web_chat: false`."""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from tertulia.gateway.deps import SettingsDep
from tertulia.gateway.errors import NotFound

router = APIRouter(include_in_schema=False)

PAGE = Path(__file__).resolve().parents[1] / "static" / "chat.html"
# The page's script and style are inline; it talks only to this gateway.
_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@functools.cache
def _page() -> str:
    return PAGE.read_text()


@router.get("/")
async def web_chat(settings: SettingsDep) -> HTMLResponse:
    if not settings.web_chat:
        raise NotFound("the web chat is turned off (web_chat: false)")
    return HTMLResponse(_page(), headers=_HEADERS)
