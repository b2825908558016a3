"""Logging: text and JSON formatters, context via contextvars, payload truncation.

Modules log through ``logging.getLogger(__name__)``; only the composition root calls
``configure_logging``. Per-request context (pod key, pod UID, node, scheduling cycle,
RPC) is set with ``log_context(pod=..., node=...)`` by the aiohttp middleware or gRPC
hook and injected into every record by ``ContextFilter``, so loggers are never threaded
through signatures. The text formatter prefixes ``[ns/name]`` (kopf's
``ObjectPrefixingMixin``); the JSON formatter writes ``severity`` and an ``object``
field (kopf's ``ObjectJsonFormatter``).

Hygiene: log keys and resourceVersions, never tokens or whole objects; anything that
may carry a payload goes through ``truncate``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Final

import orjson

PAYLOAD_LIMIT: Final = 256

log_pod: ContextVar[str | None] = ContextVar("hami_log_pod", default=None)
log_pod_uid: ContextVar[str | None] = ContextVar("hami_log_pod_uid", default=None)
log_node: ContextVar[str | None] = ContextVar("hami_log_node", default=None)
log_cycle: ContextVar[str | None] = ContextVar("hami_log_cycle", default=None)

_FIELDS: Final = (("pod", log_pod), ("uid", log_pod_uid), ("node", log_node), ("cycle", log_cycle))
_MARK: Final = "_hami_handler"


def truncate(payload: str | bytes, limit: int = PAYLOAD_LIMIT) -> str:
    """At most ``limit`` characters of a payload, marked when cut (keeps secrets and
    multi-megabyte objects out of logs)."""
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} chars)"


@contextmanager
def log_context(
    *,
    pod: str | None = None,
    uid: str | None = None,
    node: str | None = None,
    cycle: str | None = None,
) -> Iterator[None]:
    """Set the given context fields for the block (in this task and tasks it creates)."""
    tokens = []
    for var, value in ((log_pod, pod), (log_pod_uid, uid), (log_node, node), (log_cycle, cycle)):
        if value is not None:
            tokens.append((var, var.set(value)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Copies the context variables onto each record as ``record.hami_context``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "hami_context"):
            record.hami_context = {name: v for name, var in _FIELDS if (v := var.get()) is not None}
        return True


def _context(record: logging.LogRecord) -> dict[str, str]:
    ctx = getattr(record, "hami_context", None)
    if ctx is None:
        ctx = {name: v for name, var in _FIELDS if (v := var.get()) is not None}
    return dict(ctx)


class TextFormatter(logging.Formatter):
    """``2026-01-05T10:00:00.123Z INFO hami.k8s.lease [ns/pod node=n1] message``."""

    def __init__(self) -> None:
        super().__init__()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        ctx = _context(record)
        parts = []
        if "pod" in ctx:
            parts.append(ctx.pop("pod"))
        parts.extend(f"{k}={v}" for k, v in ctx.items())
        prefix = f"[{' '.join(parts)}] " if parts else ""
        line = f"{self.formatTime(record)} {record.levelname} {record.name} {prefix}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, severity, logger, message, object{...}, exception."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "severity": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = _context(record)
        if ctx:
            doc["object"] = ctx
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def configure_logging(
    level: str | int = "info", json: bool = False, *, stream: IO[str] | None = None
) -> None:
    """Install one handler on the root logger (replacing one we installed before).

    Idempotent, so tests and ``hami`` subcommands may call it repeatedly.
    """
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _MARK, True)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(numeric)
    # aiohttp's access log duplicates our own request logs at info level.
    logging.getLogger("aiohttp.access").setLevel(max(numeric, logging.WARNING))
