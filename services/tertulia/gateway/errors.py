"""Typed errors of the gateway, each mapped to one HTTP status and a reason a user can act on.

Every error body has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so the
OpenAI SDKs and the UIs built on them show the gateway's reason rather than a generic one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

# OpenAI's error `type` for each status the gateway answers with.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class GatewayError(Exception):
    """Base of the errors a request can end in; `code` is stable, `message` is for people."""

    status_code = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, retry_after: float | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.param = param

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def body(self) -> dict[str, dict[str, str | None]]:
        return error_body(self.status_code, self.code, self.message, self.param)


def error_body(
    status_code: int, code: str, message: str, param: str | None = None
) -> dict[str, dict[str, str | None]]:
    kind = _TYPE_BY_STATUS.get(status_code, "server_error" if status_code >= 500 else "error")
    return {"error": {"code": code, "message": message, "type": kind, "param": param}}


class Unauthorized(GatewayError):
    status_code = 401
    code = "unauthorized"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class MisdirectedRequest(GatewayError):
    """A Host header the gateway does not answer to (a DNS rebinding page, in local mode)."""

    status_code = 400
    code = "unknown_host"


class Forbidden(GatewayError):
    status_code = 403
    code = "forbidden"


class KnowledgeBaseDisabled(GatewayError):
    status_code = 404
    code = "knowledge_base_disabled"


class DocumentNotFound(GatewayError):
    status_code = 404
    code = "document_not_found"


class KnowledgeBaseUnavailable(GatewayError):
    status_code = 503
    code = "knowledge_base_unavailable"


class RateLimited(GatewayError):
    status_code = 429
    code = "rate_limited"


class PayloadTooLarge(GatewayError):
    status_code = 413
    code = "payload_too_large"


class InvalidInput(GatewayError):
    status_code = 422
    code = "invalid_input"


class ContentBlocked(GatewayError):
    status_code = 400
    code = "content_blocked"


class NotFound(GatewayError):
    status_code = 404
    code = "not_found"


class ModelNotFound(GatewayError):
    status_code = 404
    code = "model_not_found"


class ConversationNotFound(GatewayError):
    status_code = 404
    code = "conversation_not_found"


class BackendRejected(GatewayError):
    """The model server refused the request (a 4xx), for example a prompt over its context."""

    status_code = 400
    code = "backend_rejected"


class BackendFailed(GatewayError):
    status_code = 502
    code = "backend_error"


class BackendUnavailable(GatewayError):
    status_code = 503
    code = "backend_unavailable"


class MemoryUnavailable(GatewayError):
    status_code = 503
    code = "memory_unavailable"


class ModerationUnavailable(GatewayError):
    """The guard model cannot answer and `moderation.guard_failure` is `refuse`."""

    status_code = 503
    code = "moderation_unavailable"


class BackendTimeout(GatewayError):
    status_code = 504
    code = "backend_timeout"


def error_response(error: GatewayError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    async def handle(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, GatewayError)  # noqa: S101 - registered for GatewayError only
        return error_response(error)

    async def handle_invalid(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)  # noqa: S101 - registered for it only
        problems = error.errors()
        body = error_body(
            422, "invalid_request", "; ".join(_describe(p) for p in problems), _param(problems)
        )
        return JSONResponse(body, status_code=422)

    async def handle_http(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)  # noqa: S101 - registered for it only
        code = "not_found" if error.status_code == 404 else "http_error"
        body = error_body(error.status_code, code, str(error.detail))
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    app.add_exception_handler(GatewayError, handle)
    app.add_exception_handler(RequestValidationError, handle_invalid)
    app.add_exception_handler(HTTPException, handle_http)


# Parameters of OpenAI's API that the gateway refuses rather than ignores, with the reason.
_UNSUPPORTED = {
    "functions": "OpenAI's deprecated function calling: send tools instead",
    "function_call": "OpenAI's deprecated function calling: send tool_choice instead",
}


def _field(location: Sequence[Any]) -> str:
    """`body.messages.0.content` -> `messages[0].content`."""
    parts = [part for part in location if part != "body"]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or "body"


def _describe(problem: dict[str, Any]) -> str:
    field = _field(problem.get("loc", ()))
    if problem.get("type") == "extra_forbidden":
        reason = _UNSUPPORTED.get(field, "not a parameter this API accepts")
        return f"{field}: {reason}"
    if problem.get("type") == "json_invalid":
        return f"the body is not valid JSON ({problem.get('ctx', {}).get('error', 'malformed')})"
    return f"{field}: {problem.get('msg', 'invalid')}"


def _param(problems: Sequence[dict[str, Any]]) -> str | None:
    if not problems:
        return None
    field = _field(problems[0].get("loc", ()))
    return None if field == "body" else field
