"""Embeddings through an OpenAI-compatible /v1/embeddings, in batches, as unit vectors.

A text longer than the model's positions (512 tokens for the BERT family) is refused by the
server; it is split in halves until each part fits, and its embedding is the parts' mean,
weighted by their length (as OpenAI's cookbook embeds texts longer than a model's maximum
context: "Embedding texts that are longer than the model's maximum context length"). The
client cannot count the model's tokens, so the server's refusal is the measure.

Questions (`embed_one`) are embedded together: those that arrive while a request is on its way
to the server wait for it to return and then go in one request, up to the batch size, as
inference servers batch (a question that finds the server idle goes at once, alone). The same
text is embedded once: a question already waiting or on its way shares that embedding, and
the last `query_cache_size` questions' embeddings are kept (by a digest of the model and the
text: no question is kept in clear), so a question asked again costs no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
from array import array
from collections import OrderedDict
from collections.abc import Sequence

import httpx

from tertulia.knowledge.settings import EmbeddingSettings, read_secret


class EmbeddingError(RuntimeError):
    """The embeddings server failed or answered something that is not embeddings."""


class InputTooLong(EmbeddingError):
    """The server refused an input longer than its model's context."""


# How servers refuse an input past the model's context: llama.cpp's `exceed_context_size_error`
# (400) and, past its batch, "input (N tokens) is too large to process" (500); vLLM's and
# OpenAI's "maximum context length" (400); Hugging Face TEI's "must have less than N tokens"
# (413).
_TOO_LONG_STATUS = {400, 413, 500}
_TOO_LONG = re.compile(
    r"exceed_context_size|too large to process|maximum context length|less than \d+ tokens",
    re.IGNORECASE,
)


class Embedder:
    def __init__(
        self, settings: EmbeddingSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._settings = settings
        key = read_secret(settings.api_key_file)
        self._client = httpx.AsyncClient(
            base_url=str(settings.url).rstrip("/"),
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=httpx.Timeout(settings.timeout, connect=5.0),
            transport=transport,
        )
        self._model = settings.model
        self._cache: OrderedDict[bytes, array[float]] = OrderedDict()
        # Questions not yet sent, and those on their way, each with its waiters' future.
        self._waiting: dict[bytes, tuple[str, asyncio.Future[list[float]]]] = {}
        self._sending: dict[bytes, asyncio.Future[list[float]]] = {}
        self._sender: asyncio.Task[None] | None = None

    @property
    def batch_size(self) -> int:
        return self._settings.batch_size

    async def model_id(self) -> str:
        """The configured model, or the server's first listed one."""
        if not self._model:
            try:
                response = await self._client.get("/models")
                response.raise_for_status()
                self._model = str(response.json()["data"][0]["id"])
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as error:
                raise EmbeddingError(
                    f"cannot list the embeddings server's models: {error}"
                ) from None
        return self._model

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        size = self._settings.batch_size
        for start in range(0, len(texts), size):
            vectors.extend(await self._fitted(list(texts[start : start + size])))
        return vectors

    async def embed_one(self, text: str) -> list[float]:
        """A question's embedding: kept from before, shared with the same question waiting or
        on its way, or sent with the questions that arrive while a request is out."""
        key = hashlib.blake2b(f"{await self.model_id()}\0{text}".encode(), digest_size=16).digest()
        kept = self._cache.get(key)
        if kept is not None:
            self._cache.move_to_end(key)
            return kept.tolist()
        future = self._sending.get(key)
        if future is None:
            waiting = self._waiting.get(key)
            if waiting is None:
                future = asyncio.get_running_loop().create_future()
                self._waiting[key] = (text, future)
                if self._sender is None:
                    self._sender = asyncio.create_task(self._send_waiting())
            else:
                future = waiting[1]
        # A waiter that gives up (its client left) leaves the others their embedding.
        return list(await asyncio.shield(future))

    async def _send_waiting(self) -> None:
        """Send the waiting questions, a batch at a time, until none waits."""
        try:
            while self._waiting:
                keys = list(self._waiting)[: self._settings.batch_size]
                batch = [self._waiting.pop(key) for key in keys]
                self._sending = dict(zip(keys, (future for _, future in batch), strict=True))
                try:
                    vectors = await self._fitted([text for text, _ in batch])
                except BaseException as error:  # each waiter gets the failure as its own
                    closed = not isinstance(error, Exception)  # cancelled by aclose
                    for _, future in batch:
                        future.set_exception(_closed() if closed else error)
                        future.exception()  # retrieved: a waiter that left does not log it
                    if closed:
                        raise
                    continue
                finally:
                    self._sending = {}
                for key, (_, future), vector in zip(keys, batch, vectors, strict=True):
                    # As kept, so a question gets the same vector the first time and after.
                    kept = array("f", vector)
                    self._keep(key, kept)
                    future.set_result(kept.tolist())
        finally:
            self._sender = None
            for _, future in self._waiting.values():
                future.set_exception(_closed())
                future.exception()
            self._waiting = {}

    def _keep(self, key: bytes, vector: array[float]) -> None:
        if self._settings.query_cache_size == 0:
            return
        self._cache[key] = vector
        if len(self._cache) > self._settings.query_cache_size:
            self._cache.popitem(last=False)

    async def _fitted(self, texts: list[str]) -> list[list[float]]:
        """The batch's embeddings; a batch that holds a text too long is embedded text by
        text, and a text too long from its halves."""
        try:
            return await self._batch(texts)
        except InputTooLong:
            if len(texts) > 1:
                return [vector for text in texts for vector in await self._fitted([text])]
            return [await self._split(texts[0])]

    async def _split(self, text: str) -> list[float]:
        words = text.split()
        # A text of one long word (or none, as written in scripts without spaces) is split
        # between characters.
        pieces: Sequence[str] = words if len(words) > 1 else text
        if len(pieces) < 2:
            raise InputTooLong("one character is more than the embedding model's context")
        half = len(pieces) // 2
        joiner = " " if pieces is words else ""
        parts = [joiner.join(pieces[:half]), joiner.join(pieces[half:])]
        first, second = [(await self._fitted([part]))[0] for part in parts]
        weights = (half, len(pieces) - half)
        return _unit([weights[0] * a + weights[1] * b for a, b in zip(first, second, strict=True)])

    async def _batch(self, texts: list[str]) -> list[list[float]]:
        body = {"model": await self.model_id(), "input": texts}
        try:
            response = await self._client.post("/embeddings", json=body)
        except httpx.HTTPError as error:
            raise EmbeddingError(f"the embeddings server cannot be reached: {error!r}") from None
        if response.status_code in _TOO_LONG_STATUS and _TOO_LONG.search(response.text):
            raise InputTooLong(f"the embeddings server refused an input: {response.text[:200]}")
        if response.status_code != httpx.codes.OK:
            raise EmbeddingError(
                f"the embeddings server answered {response.status_code}: {response.text[:200]}"
            )
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = [[float(value) for value in item["embedding"]] for item in data]
        except (KeyError, TypeError, ValueError) as error:
            raise EmbeddingError(f"the embeddings server's answer is malformed: {error}") from None
        if len(vectors) != len(texts):
            raise EmbeddingError(f"asked for {len(texts)} embeddings, got {len(vectors)}")
        return [_unit(vector) for vector in vectors]

    async def aclose(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        await self._client.aclose()


def _closed() -> EmbeddingError:
    return EmbeddingError("the embeddings client was closed")


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    if norm == 0.0:
        raise EmbeddingError("the embeddings server returned a zero vector")
    return [value / norm for value in vector]
