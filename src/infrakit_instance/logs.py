"""Logging set-up: a connection id on every line, text or JSON lines.

The server sets :data:`conn_id` while it handles a connection's bytes; tasks
and callbacks started then inherit it (contextvars), so every line they log
names the connection.  Lines not about a connection show ``-``.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar

import orjson

__all__ = ["DEBUG_DUMP", "JsonFormatter", "conn_id", "dump", "setup"]

#: The connection being served, as ``c<N>`` (``-`` outside any).
conn_id: ContextVar[str] = ContextVar("conn_id", default="-")

#: Bytes of a request or answer shown at debug level (the rest is counted, not shown).
DEBUG_DUMP = 1024


class _ConnFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.conn = conn_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, conn, message (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "conn": getattr(record, "conn", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup(level: int, fmt: str = "text") -> None:
    """Log to stderr at ``level``, as ``text`` or ``json`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ConnFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(conn)s]: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def dump(data: bytes) -> str:
    """``data`` for a debug line, cut at :data:`DEBUG_DUMP` bytes."""
    if len(data) <= DEBUG_DUMP:
        return repr(data)
    return f"{data[:DEBUG_DUMP]!r}... ({len(data)} bytes in all)"
