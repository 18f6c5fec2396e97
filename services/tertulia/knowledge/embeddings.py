"""Embeddings through an OpenAI-compatible /v1/embeddings, in batches, as unit vectors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import httpx

from tertulia.knowledge.settings import EmbeddingSettings, read_secret


class EmbeddingError(RuntimeError):
    """The embeddings server failed or answered something that is not embeddings."""


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
            vectors.extend(await self._batch(list(texts[start : start + size])))
        return vectors

    async def embed_one(self, text: str) -> list[float]:
        return (await self._batch([text]))[0]

    async def _batch(self, texts: list[str]) -> list[list[float]]:
        body = {"model": await self.model_id(), "input": texts}
        try:
            response = await self._client.post("/embeddings", json=body)
        except httpx.HTTPError as error:
            raise EmbeddingError(f"the embeddings server cannot be reached: {error!r}") from None
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
