"""JSON logs for every Tertulia process, one object a line, with the current request id.

Message text is never logged unless debug logging of content is switched on explicitly;
callers pass content through `content()` so that one switch governs it everywhere.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_log_content = False

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
        return json.dumps(entry, default=str, ensure_ascii=False)


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


def content(text: str) -> str:
    """`text` when content logging is on, else only its length: message text stays private."""
    return text if _log_content else f"<{len(text)} chars>"
