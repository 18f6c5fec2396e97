"""Auth: API keys from a mounted Secret, one file per identity, compared in constant time."""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import Headers

from tertulia.gateway.errors import Forbidden, Unauthorized

logger = logging.getLogger(__name__)

# A mounted Secret changes in place when it is edited; look for that at most this often.
_RELOAD_SECONDS = 5.0


@dataclass(frozen=True)
class Identity:
    """Who called: the name of the API key's file, or `anonymous` when keys are off."""

    name: str


ANONYMOUS = Identity("anonymous")


def acting_user(identity: Identity, requested: str | None, prefixes: dict[str, str]) -> str:
    """The user a request acts for: the one it names, else the key's identity. A key bound
    to a prefix (a bot's, to its platform's users) may name no other user."""
    user = requested or identity.name
    prefix = prefixes.get(identity.name)
    if prefix is not None and not user.startswith(prefix):
        raise Forbidden(f"the API key {identity.name!r} may act only for users '{prefix}...'")
    return user


def presented_key(headers: Headers) -> str | None:
    """The key from `Authorization: Bearer KEY` (what OpenAI clients send) or `X-API-Key`."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("x-api-key") or None


class ApiKeys:
    def __init__(self, directory: Path | None) -> None:
        self._directory = directory
        self._keys: list[tuple[bytes, Identity]] = []
        self._loaded_mtime = -1.0
        self._checked_at = 0.0
        if directory is None:
            logger.warning("no API keys configured: the gateway accepts every request")
        else:
            self._reload()

    @property
    def enabled(self) -> bool:
        return self._directory is not None

    def identify(self, key: str | None) -> Identity:
        if self._directory is None:
            return ANONYMOUS
        if time.monotonic() - self._checked_at > _RELOAD_SECONDS:
            self._reload()
        if not key:
            raise Unauthorized("an API key is required: send it as 'Authorization: Bearer KEY'")
        presented = key.encode()
        match: Identity | None = None
        # Compare with every key, so the time taken says nothing about which one matched.
        for known, identity in self._keys:
            if hmac.compare_digest(presented, known) and match is None:
                match = identity
        if match is None:
            raise Unauthorized("the API key is not valid")
        return match

    def _reload(self) -> None:
        assert self._directory is not None  # noqa: S101 - callers check
        self._checked_at = time.monotonic()
        try:
            mtime = self._directory.stat().st_mtime
        except FileNotFoundError:
            logger.error(
                "the API keys directory does not exist", extra={"path": str(self._directory)}
            )
            self._keys = []
            return
        if mtime == self._loaded_mtime:
            return
        keys = []
        for path in sorted(self._directory.iterdir()):
            # A mounted Secret also holds ..data and timestamped folders: skip the dot entries.
            if path.name.startswith(".") or not path.is_file():
                continue
            value = path.read_text().strip()
            if value:
                keys.append((value.encode(), Identity(path.name)))
        self._keys = keys
        self._loaded_mtime = mtime
        logger.info(
            "loaded API keys", extra={"identities": [identity.name for _, identity in keys]}
        )
