"""Auth: API keys from a mounted Secret, one file per identity, compared in constant time; and
the web chat's sessions, a signed cookie per browser that acts for that browser's user alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.datastructures import Headers

from tertulia.common.logging import protect
from tertulia.gateway.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from tertulia.gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

# A mounted Secret changes in place when it is edited; look for that at most this often.
_RELOAD_SECONDS = 5.0


@dataclass(frozen=True)
class Identity:
    """Who called: the name of the API key's file, or `anonymous` when keys are off. `user`
    binds the identity to one user (a web chat session's browser): it acts for no other."""

    name: str
    user: str | None = None


ANONYMOUS = Identity("anonymous")


def is_admin(identity: Identity, keys: ApiKeys, settings: GatewaySettings) -> bool:
    """Whether `identity` may use the admin API: an admin key's, or anyone's when keys are
    off (local use); never a web chat session's."""
    if identity.user is not None:
        return False
    return not keys.enabled or identity.name in settings.admin_identities


def acting_user(identity: Identity, requested: str | None, prefixes: dict[str, str]) -> str:
    """The user a request acts for: the one it names, else the key's identity. A key bound
    to a prefix (a bot's, to its platform's users) may name no other user; a session acts for
    its own user only."""
    if identity.user is not None:
        if requested is not None and requested != identity.user:
            raise Forbidden("a web chat session acts only for its own user")
        return identity.user
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
            protect(value)
            if value:
                keys.append((value.encode(), Identity(path.name)))
        self._keys = keys
        self._loaded_mtime = mtime
        logger.info(
            "loaded API keys", extra={"identities": [identity.name for _, identity in keys]}
        )

    def key_of(self, name: str) -> str | None:
        """The key of the identity `name`, if one is configured."""
        if self._directory is None:
            return None
        if time.monotonic() - self._checked_at > _RELOAD_SECONDS:
            self._reload()
        for known, identity in self._keys:
            if identity.name == name:
                return known.decode()
        return None


SESSION_COOKIE = "tertulia_session"
# Sent by the web chat with every request that changes something: a page of another origin
# cannot add it without a CORS preflight, which the gateway never grants.
SESSION_HEADER = "x-tertulia-web"
_BROWSER = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
_SAFE_METHODS = ("GET", "HEAD")


class WebSessions:
    """The web chat's sessions. A browser that presents the web chat's key (or any browser,
    when keys are off) gets a cookie naming a random browser id, signed with that key: each
    browser is then its own user (`web:<id>`), with its own history and rate limit, and the
    key never stays in the page. Changing the key ends every session."""

    def __init__(self, keys: ApiKeys, identity: str) -> None:
        self._keys = keys
        self.identity = identity
        # Without keys (local use only) sessions are signed with a key of this process's own.
        self._process_secret = secrets.token_bytes(32)

    def _secret(self) -> bytes | None:
        if not self._keys.enabled:
            return self._process_secret
        key = self._keys.key_of(self.identity)
        return key.encode() if key else None

    def _signature(self, secret: bytes, browser: str) -> str:
        digest = hmac.new(secret, f"tertulia-web-session:{browser}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")

    def issue(self, previous: str | None = None) -> str:
        """A cookie value for a new browser, or for the one `previous` (a valid value) names."""
        secret = self._secret()
        if secret is None:
            raise Unauthorized(f"the web chat needs the {self.identity!r} API key configured")
        browser = self._browser(previous) if previous else None
        browser = browser or secrets.token_urlsafe(24)
        return f"{browser}.{self._signature(secret, browser)}"

    def _browser(self, value: str) -> str | None:
        secret = self._secret()
        browser, _, signature = value.partition(".")
        if secret is None or not _BROWSER.match(browser):
            return None
        if not hmac.compare_digest(signature.encode(), self._signature(secret, browser).encode()):
            return None
        return browser

    def cookie(self, headers: Headers) -> str | None:
        raw = headers.get("cookie")
        if not raw or SESSION_COOKIE not in raw:
            return None
        parsed: SimpleCookie = SimpleCookie()
        try:
            parsed.load(raw)
        except Exception:  # a malformed Cookie header is no session
            return None
        morsel = parsed.get(SESSION_COOKIE)
        return morsel.value if morsel is not None else None

    def identify(self, headers: Headers, method: str) -> Identity | None:
        """The session's identity, when the request carries a valid session cookie (and, to
        change anything, the web chat's header); None otherwise."""
        value = self.cookie(headers)
        if value is None:
            return None
        browser = self._browser(value)
        if browser is None:
            raise Unauthorized("the web chat session is not valid any more: open the page again")
        if method not in _SAFE_METHODS and headers.get(SESSION_HEADER) != "1":
            raise Forbidden(f"a web chat session's requests carry the {SESSION_HEADER} header")
        return Identity(self.identity, user=f"web:{browser}")
