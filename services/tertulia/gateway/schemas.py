"""Request and response bodies of the gateway's API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


# OpenAI's rule for a function's name, which vLLM, llama.cpp and Ollama take as it is.
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    # A JSON object as text, as the model wrote it (it may not parse: the caller decides).
    arguments: str


class ToolCall(BaseModel):
    """A call the model asked for, in an assistant message the client sends back."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    # A JSON Schema object, passed on as the client wrote it.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOOL_NAME_PATTERN)


class NamedToolChoice(BaseModel):
    """`tool_choice` naming the one function the model must call."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    # Unset only on an assistant message that carries tool calls, as OpenAI's API allows.
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(None, min_length=1, max_length=128)
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _shape(self) -> OpenAIMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required unless an assistant message has tool_calls")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls belong to an assistant message")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("tool_call_id is required on a tool message, and only there")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content

    def calls_text(self) -> str:
        """The calls' names and arguments, as the model reads them back."""
        return "\n".join(
            f"{call.function.name} {call.function.arguments}" for call in self.tool_calls or []
        )


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
    tools: list[Tool] | None = Field(
        None, max_length=128, description="Functions the model may call (OpenAI's limit: 128)."
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def uses_tools(self) -> bool:
        """Whether the request offers tools or carries a conversation that used them."""
        return (
            self.tools is not None
            or self.tool_choice is not None
            or self.parallel_tool_calls is not None
            or any(m.role == "tool" or m.tool_calls for m in self.messages)
        )
