"""A deterministic OpenAI-compatible model server, for unit tests and benchmarks only.

It speaks the subset of the API that vLLM, Ollama and llama.cpp share (`/v1/models`,
`/v1/chat/completions` with and without streaming, `/v1/embeddings`), answers with scripted
tokens, and fails on demand: an HTTP error, a slow first token, or a stream cut mid-way.
Integration tests use the real llama.cpp server instead.

Run it alone with `python -m tests.fakes.openai_backend --port 8000`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODEL_ID = "fake-model"
_TOKEN = re.compile(r"\s*\S+")


class StreamCutError(ConnectionError):
    """Raised inside the app to drop the connection in the middle of a stream."""


@dataclass
class FakeBackendConfig:
    """How the fake answers; `POST /fake/config` changes it at run time."""

    # The reply's text; empty means echo: "You said: <last user message>".
    reply: str = ""
    # Seconds before the first token, and between tokens, of every reply.
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    # Answer every /v1 request with this HTTP status instead (0: answer normally).
    fail_status: int = 0
    # Drop the connection after this many streamed tokens (-1: never).
    cut_after_tokens: int = -1
    # End streams without the final `data: [DONE]`, as a broken engine would.
    omit_done: bool = False
    # Honour `stream_options.include_usage` (False: ignore it, as some engines do).
    stream_usage: bool = True
    embedding_dimensions: int = 16
    model: str = MODEL_ID
    # Calls ({"name", "arguments"}) to answer a request that offers tools with, unless its
    # last message is a tool's result (then the answer is text: "The tool said: ...").
    tool_calls: list[dict[str, str]] = field(default_factory=list)

    def update(self, values: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        for name, value in values.items():
            setattr(self, name, value)


@dataclass
class FakeBackend:
    """The ASGI app; `requests` keeps every completion request body, newest last."""

    config: FakeBackendConfig = field(default_factory=FakeBackendConfig)
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Streams whose client went away before the end: the proof that cancelling reaches here.
    streams_cancelled: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        method, path = scope["method"], scope["path"]
        if self.config.fail_status and path.startswith("/v1/"):
            if method == "POST" and path == "/v1/chat/completions":
                self.requests.append(await _body(receive))
            await _json(
                send,
                self.config.fail_status,
                _error(f"scripted failure {self.config.fail_status}", "server_error"),
            )
            return
        if method == "GET" and path in ("/health", "/v1/health"):
            await _json(send, 200, {"status": "ok"})
        elif method == "GET" and path == "/v1/models":
            await _json(send, 200, self._models())
        elif method == "POST" and path == "/v1/chat/completions":
            await self._chat(await _body(receive), receive, send)
        elif method == "POST" and path == "/v1/embeddings":
            await self._embeddings(await _body(receive), send)
        elif method == "GET" and path == "/fake/requests":
            await _json(
                send, 200, {"requests": self.requests, "streams_cancelled": self.streams_cancelled}
            )
        elif method == "GET" and path == "/fake/config":
            await _json(send, 200, asdict(self.config))
        elif method == "POST" and path == "/fake/config":
            try:
                self.config.update(await _body(receive))
            except (ValueError, json.JSONDecodeError) as error:
                await _json(send, 400, _error(str(error), "invalid_request_error"))
                return
            await _json(send, 200, asdict(self.config))
        else:
            await _json(send, 404, _error(f"no route for {method} {path}", "not_found_error"))

    def reply_for(self, request: dict[str, Any]) -> str:
        if self.config.reply:
            return self.config.reply
        messages = request.get("messages", [])
        if messages and messages[-1].get("role") == "tool":
            return f"The tool said: {messages[-1].get('content')}"
        user_messages = [m for m in messages if m.get("role") == "user"]
        last = user_messages[-1]["content"] if user_messages else ""
        if isinstance(last, list):  # the content-parts form
            last = " ".join(part.get("text", "") for part in last)
        return f"You said: {last}"

    def _models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self.config.model, "object": "model", "owned_by": "tertulia-tests"}],
        }

    def calls_for(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """The scripted tool calls, as OpenAI lists them, when this request gets them."""
        messages = request.get("messages") or [{}]
        if not request.get("tools") or messages[-1].get("role") == "tool":
            return []
        return [
            {"id": f"call_{index}", "type": "function", "function": dict(call)}
            for index, call in enumerate(self.config.tool_calls)
        ]

    async def _chat(self, request: dict[str, Any], receive: Receive, send: Send) -> None:
        self.requests.append(request)
        calls = self.calls_for(request)
        if calls:
            await self._tool_calls(request, calls, send)
            return
        tokens = _TOKEN.findall(self.reply_for(request))
        max_tokens = request.get("max_tokens") or request.get("max_completion_tokens")
        finish_reason = "stop"
        if max_tokens is not None and len(tokens) > int(max_tokens):
            tokens, finish_reason = tokens[: int(max_tokens)], "length"
        usage = {
            "prompt_tokens": _count_prompt_tokens(request),
            "completion_tokens": len(tokens),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion_id = "chatcmpl-" + hashlib.sha256(json.dumps(request).encode()).hexdigest()[:16]
        created = int(time.time())
        if self.config.first_token_delay:
            await asyncio.sleep(self.config.first_token_delay)
        if not request.get("stream"):
            if self.config.token_delay:
                await asyncio.sleep(self.config.token_delay * len(tokens))
            body = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": self.config.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(tokens)},
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage,
            }
            await _json(send, 200, body)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )

        def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.config.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.create_task(watch())
        try:
            await _event(send, chunk({"role": "assistant", "content": ""}))
            for index, token in enumerate(tokens):
                if index == self.config.cut_after_tokens:
                    raise StreamCutError("scripted cut in the middle of the stream")
                if index and self.config.token_delay:
                    await asyncio.sleep(self.config.token_delay)
                if disconnected.is_set():
                    self.streams_cancelled += 1
                    return
                await _event(send, chunk({"content": token}))
        finally:
            watcher.cancel()
        await _event(send, chunk({}, finish_reason))
        if self.config.stream_usage and (request.get("stream_options") or {}).get("include_usage"):
            # As OpenAI and vLLM send it: a last chunk with no choices and the usage.
            await _event(send, {**chunk({}), "choices": [], "usage": usage})
        closing = b"" if self.config.omit_done else b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": closing})

    async def _tool_calls(
        self, request: dict[str, Any], calls: list[dict[str, Any]], send: Send
    ) -> None:
        """Answer with tool calls; streamed as OpenAI streams them: each call's id, type and
        name in its first delta, then its arguments a few characters a chunk."""
        completion_id = "chatcmpl-" + hashlib.sha256(json.dumps(request).encode()).hexdigest()[:16]
        created = int(time.time())
        head = {"id": completion_id, "created": created, "model": self.config.model}
        if not request.get("stream"):
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            await _json(send, 200, {**head, "object": "chat.completion", "choices": [choice]})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return {**head, "object": "chat.completion.chunk", "choices": [choice]}

        for index, call in enumerate(calls):
            first = {**call, "index": index, "function": {**call["function"], "arguments": ""}}
            delta: dict[str, Any] = {"tool_calls": [first]}
            if not index:
                delta = {"role": "assistant", "content": None, **delta}
            await _event(send, chunk(delta))
            arguments = call["function"]["arguments"]
            for start in range(0, len(arguments), 8):
                if self.config.token_delay:
                    await asyncio.sleep(self.config.token_delay)
                piece = {"index": index, "function": {"arguments": arguments[start : start + 8]}}
                await _event(send, chunk({"tool_calls": [piece]}))
        await _event(send, chunk({}, "tool_calls"))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _embeddings(self, request: dict[str, Any], send: Send) -> None:
        inputs = request.get("input", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        data = [
            {"object": "embedding", "index": index, "embedding": self._embed(text)}
            for index, text in enumerate(inputs)
        ]
        tokens = sum(len(_TOKEN.findall(text)) for text in inputs)
        await _json(
            send,
            200,
            {
                "object": "list",
                "data": data,
                "model": self.config.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _embed(self, text: str) -> list[float]:
        # A bag of hashed words: texts sharing words get close vectors, deterministically.
        vector = [0.0] * self.config.embedding_dimensions
        for word in re.findall(r"\w+", text.lower()):
            digest = hashlib.sha256(word.encode()).digest()
            vector[digest[0] % len(vector)] += 1.0 if digest[1] % 2 else -1.0
        norm = math.sqrt(sum(value * value for value in vector)) or 1.0
        return [value / norm for value in vector]


def _count_prompt_tokens(request: dict[str, Any]) -> int:
    return sum(len(_TOKEN.findall(str(m.get("content", "")))) for m in request.get("messages", []))


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind}}


async def _body(receive: Receive) -> dict[str, Any]:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    return json.loads(raw) if raw else {}


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _event(send: Send, payload: dict[str, Any]) -> None:
    data = b"data: " + json.dumps(payload).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@contextlib.asynccontextmanager
async def serving(backend: FakeBackend) -> AsyncIterator[str]:
    """Serve `backend` on a free port of 127.0.0.1 inside the running event loop; yields /v1."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(backend, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        await task
        sock.close()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--reply", default="")
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    arguments = parser.parse_args()
    config = FakeBackendConfig(
        reply=arguments.reply,
        token_delay=arguments.token_delay,
        first_token_delay=arguments.first_token_delay,
    )
    uvicorn.run(
        FakeBackend(config),
        host=arguments.host,
        port=arguments.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
