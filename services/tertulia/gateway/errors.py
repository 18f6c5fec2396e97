"""Typed errors of the gateway, each mapped to one HTTP status and a reason a user can act on."""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class GatewayError(Exception):
    """Base of the errors a request can end in; `code` is stable, `message` is for people."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class Unauthorized(GatewayError):
    status_code = 401
    code = "unauthorized"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


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


class BackendTimeout(GatewayError):
    status_code = 504
    code = "backend_timeout"


def install_error_handlers(app: FastAPI) -> None:
    async def handle(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, GatewayError)  # noqa: S101 - registered for GatewayError only
        return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)

    app.add_exception_handler(GatewayError, handle)
