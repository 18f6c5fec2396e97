"""Embeddings through an OpenAI-compatible /v1/embeddings, in batches, as unit vectors.

A text longer than the model's positions (512 tokens for the BERT family) is refused by the
server; it is split in halves until each part fits, and its embedding is the parts' mean,
weighted by their length (as OpenAI's cookbook embeds texts longer than a model's maximum
context: "Embedding texts that are longer than the model's maximum context length"). The
client cannot count the model's tokens, so the server's refusal is the measure.
"""

from __future__ import annotations

import math
import re
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
        return (await self._fitted([text]))[0]

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
        await self._client.aclose()


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    if norm == 0.0:
        raise EmbeddingError("the embeddings server returned a zero vector")
    return [value / norm for value in vector]
