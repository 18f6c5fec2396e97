"""Request and response bodies of the gateway's API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tertulia.gateway.store import Turn

# Conversation ids are built by clients from platform, channel and thread ids.
CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9_.:@/+=-]{1,256}$"


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(description="The user's message.")
    context: str | None = Field(None, description="Extra context for this message only.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    conversation_id: str | None = Field(
        None,
        pattern=CONVERSATION_ID_PATTERN,
        description="Continue this conversation; a new one is started when absent.",
    )
    user: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="The end user, for memory and rate limits; defaults to the API key's identity.",
    )


class Source(BaseModel):
    source: str
    title: str = ""
    section: str = ""
    score: float = 0.0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatResponse(BaseModel):
    response: str
    conversation_id: str
    sources: list[Source]
    finish_reason: str = "stop"
    usage: Usage | None = None


class Conversation(BaseModel):
    conversation_id: str
    turns: list[Turn]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


# The error statuses of the chat routes, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 413, 422, 429, 502, 503, 504)
}


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content)
        return self.content or ""


class OpenAIChatRequest(BaseModel):
    """An OpenAI chat completion request; fields the gateway does not know pass upstream."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)
    stream_options: dict[str, Any] | None = None
