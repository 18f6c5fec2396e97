"""JSON logs for every Tertulia process, one object a line, with the current request id.

Message text is never logged unless debug logging of content is switched on explicitly;
callers pass content through `content()` so that one switch governs it everywhere.

No secret is ever written: every value a process reads from a Secret is registered with
`protect()`, and every line (its message, its extras, its traceback) passes `redact()`, which
also catches tokens by their shape (a Telegram token in a Bot API URL, Slack's and Discord's
tokens, bearer credentials, a password in a URL) in case one came from elsewhere. The HTTP
clients' own loggers, which write whole URLs (the Telegram SDK puts the bot token in each),
are quietened as well.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import threading
import time
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_log_content = False

REDACTED = "[redacted]"
# Secret values read by this process, longest first (one containing another goes first).
_protected: list[str] = []
_protected_lock = threading.Lock()
# Shorter values than this are not replaced: they would match ordinary words.
_SHORTEST = 8
# Tokens by their shape: each match's first group (if any) is kept, the rest replaced.
_SHAPES = re.compile(
    r"(?P<telegram>\b(?:bot)?\d{5,}:)[A-Za-z0-9_-]{20,}"
    r"|\bxox[abeoprs]-[A-Za-z0-9-]{8,}"
    r"|\bxapp-[A-Za-z0-9-]{8,}"
    r"|\bhf_[A-Za-z0-9]{20,}"
    r"|\b[MNO][A-Za-z0-9_-]{23,27}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,40}\b"
    r"|(?P<scheme>(?i:bearer|basic|token)\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|(?P<userinfo>://[^/\s:@]*:)[^/\s@]+(?=@)"
)


def protect(value: str | None) -> str | None:
    """Register a secret value (a token, a key, a password) so that no log line carries it;
    returns it unchanged."""
    if value and len(value) >= _SHORTEST:
        with _protected_lock:
            if value not in _protected:
                _protected.append(value)
                _protected.sort(key=len, reverse=True)
    return value


def redact(text: str) -> str:
    """`text` without any protected value, and without anything shaped like a token."""
    for value in _protected:
        if value in text:
            text = text.replace(value, REDACTED)
    return _SHAPES.sub(_keep_prefix, text)


def _keep_prefix(found: re.Match[str]) -> str:
    kept = found.group("telegram") or found.group("scheme") or found.group("userinfo") or ""
    return kept + REDACTED


# Attributes every LogRecord has; anything else passed in `extra=` goes into the JSON object.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


# Extras that libraries attach and no reader needs: uvicorn's coloured copy of the message,
# and the whole of kopf's settings on every record of an object (its `k8s_ref` is kept).
_LEFT_OUT = frozenset({"color_message", "settings", "k8s_skip"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current:
            entry["request_id"] = current
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and key not in _LEFT_OUT and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # The whole line, extras and traceback included, as it will be written.
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


def configure_logging(level: str = "info", *, log_content: bool = False) -> None:
    """Send JSON logs to stderr at `level`; `log_content` allows message text in them."""
    global _log_content  # one process-wide switch, set once at start-up
    _log_content = log_content
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs would duplicate the gateway's own request log line.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The HTTP clients log every request's whole URL (and, at debug, its headers): a
    # Telegram bot's carries its token. Their warnings still come through, redacted.
    for name in (
        "httpx",
        "httpcore",
        "hpack",
        "urllib3",
        "websockets",
        "telegram.ext",
        "slack_sdk",
    ):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def content(text: str) -> str:
    """`text` when content logging is on, else only its length: message text stays private."""
    return text if _log_content else f"<{len(text)} chars>"
