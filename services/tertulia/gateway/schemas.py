"""Request and response bodies of the gateway's API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tertulia.gateway.store import Turn
from tertulia.knowledge.results import SearchFilters

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
    filters: SearchFilters | None = Field(
        None, description="Retrieve only passages whose metadata match these patterns."
    )


class Source(BaseModel):
    source: str
    title: str = ""
    section: str = ""
    score: float = 0.0
    text: str = Field("", description="The passage the model was given, numbered as cited.")


class KnowledgeBaseInfo(BaseModel):
    name: str = Field(description="The Weaviate collection.")
    passages: int | None = Field(description="Passages stored; null while it cannot be read.")


class Welcome(BaseModel):
    """What the web chat shows before the first question."""

    model: str
    knowledge_base: KnowledgeBaseInfo | None = Field(description="Null when it is off.")
    examples: list[str] = Field(description="Questions to start with, from the documents.")


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
    notice: str | None = Field(
        None,
        description="Set when the answer was given without a feature: conversation memory "
        "was unavailable, so it did not see the history and the turn is not remembered.",
    )


class Conversation(BaseModel):
    conversation_id: str
    turns: list[Turn]


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable identifier of the error, for programs.")
    message: str = Field(description="What went wrong and what to do, for people.")
    type: str = Field(description="OpenAI's error class: invalid_request_error, rate_limit_error…")
    param: str | None = Field(None, description="The request field at fault, when one is.")


class ErrorBody(BaseModel):
    error: ErrorDetail


# The error statuses of the chat routes, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 413, 422, 429, 502, 503, 504)
}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class OpenAIChatRequest(BaseModel):
    """An OpenAI chat completion request: the parameters every supported engine understands.
    An unknown parameter is refused by name rather than silently dropped."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Ignored: the gateway serves one model.")
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = Field(None, max_length=4)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    n: int | None = Field(None, ge=1, le=1, description="One choice per request.")
    user: str | None = Field(None, min_length=1, max_length=256)
