"""The web chat at `/`: one self-contained page that streams answers from `/chat/stream`,
renders them as Markdown, cites their sources, and keeps the conversation across reloads;
`/web/welcome` tells it which model and knowledge base it talks to, and `/web/session` trades
the web chat's key for a session cookie, so each browser is a user of its own and no key
stays in the page. Off with `web_chat: false`."""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import re
from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse

from tertulia.gateway.deps import IdentityDep, ServicesDep, SettingsDep
from tertulia.gateway.errors import Forbidden, NotFound
from tertulia.gateway.pipeline.auth import SESSION_COOKIE
from tertulia.gateway.schemas import KnowledgeBaseInfo, Welcome

logger = logging.getLogger(__name__)


async def _web_chat_on(settings: SettingsDep) -> None:
    if not settings.web_chat:
        raise NotFound("the web chat is turned off (web_chat: false)")


router = APIRouter(include_in_schema=False, dependencies=[Depends(_web_chat_on)])

PAGE = Path(__file__).resolve().parents[1] / "static" / "chat.html"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)
# Without a knowledge base, or while it cannot be read.
GENERAL_EXAMPLES = ["What can you help me with?", "Explain a topic you know well, briefly."]


@functools.cache
def _page() -> tuple[str, dict[str, str]]:
    """The page, and its headers: a Content-Security-Policy that allows its own script and
    style by their hashes and nothing inline besides, so text that reached the page could
    not run even if it were ever parsed as HTML; it talks only to this gateway."""
    page = PAGE.read_text()
    allowed: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(page):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        allowed[tag].append(f"'sha256-{digest}'")
    policy = (
        f"default-src 'none'; script-src {' '.join(allowed['script'])}; "
        f"style-src {' '.join(allowed['style'])}; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return page, headers


@router.get("/")
async def web_chat() -> HTMLResponse:
    page, headers = _page()
    return HTMLResponse(page, headers=headers)


@router.post("/web/session", status_code=204)
async def open_session(request: Request, identity: IdentityDep, services: ServicesDep) -> Response:
    """A session cookie for this browser, for the web chat's key (`Authorization: Bearer`),
    or renewed for a valid session; any browser gets one when keys are off. The browser keeps
    its id, and so its history, while its cookie stays valid."""
    sessions = services.sessions
    if services.api_keys.enabled and identity.name != sessions.identity:
        raise Forbidden(
            f"the {identity.name!r} API key does not open the web chat: use the "
            f"{sessions.identity!r} key"
        )
    value = sessions.issue(sessions.cookie(request.headers))
    response = Response(status_code=204)
    forwarded = request.headers.get("x-forwarded-proto", "")
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=services.settings.memory.ttl_seconds,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https",
    )
    return response


@router.get("/web/welcome")
async def welcome(_: IdentityDep, services: ServicesDep) -> Welcome:
    settings = services.settings
    if services.retriever is None:
        return Welcome(model=settings.model_name, knowledge_base=None, examples=GENERAL_EXAMPLES)
    try:
        summary = await services.retriever.describe()
    except Exception as error:  # the page still opens; the chat works without the KB
        logger.warning("cannot describe the knowledge base", extra={"error": str(error)})
        info = KnowledgeBaseInfo(name=settings.knowledge_base.collection, passages=None)
        return Welcome(model=settings.model_name, knowledge_base=info, examples=GENERAL_EXAMPLES)
    return Welcome(
        model=settings.model_name,
        knowledge_base=KnowledgeBaseInfo(name=summary.name, passages=summary.passages),
        examples=example_questions(summary.headings) or GENERAL_EXAMPLES,
    )


def example_questions(headings: list[tuple[str, str]], count: int = 3) -> list[str]:
    """Questions about the sections of the stored documents, one document after another so
    the examples are spread over them: `Setup > Scaling the model server` becomes
    "Tell me about scaling the model server."."""
    by_title: dict[str, list[str]] = {}
    for title, section in headings:
        topic = (section.rsplit(" > ", 1)[-1] or title).strip()
        if 1 <= len(topic.split()) <= 8 and topic not in by_title.setdefault(title, []):
            by_title[title].append(topic)
    questions: list[str] = []
    rounds = max((len(topics) for topics in by_title.values()), default=0)
    for depth in range(rounds):
        for topics in by_title.values():
            if depth < len(topics) and len(questions) < count:
                questions.append(f"Tell me about {_lower_first(topics[depth])}.")
    return questions


def _lower_first(topic: str) -> str:
    """`Scaling the model` -> `scaling the model`; an acronym or a name in capitals
    (`GPU nodes`, `WebUI`) is left as it is."""
    first = topic.split()[0]
    if len(first) > 1 and (first[1:].lower() != first[1:] or first.isupper()):
        return topic
    return topic[0].lower() + topic[1:]
