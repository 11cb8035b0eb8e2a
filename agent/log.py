"""Structured logging: JSON lines (or console) on stderr, every line carrying pod, ordinal and role."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from agent.secret import redact

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: no known secret value leaves in any string field."""
    for key, value in list(event_dict.items()):
        if isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


def _identity_first(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Put the fields every line carries first, in a stable order, for people reading raw JSON."""
    ordered: dict[str, Any] = {}
    for key in ("timestamp", "level", "event", "pod", "ordinal", "role"):
        ordered[key] = event_dict.pop(key, None)
    ordered.update(event_dict)
    return ordered


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog for this process; `auto` means JSON unless stderr is a terminal."""
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_secrets,
            _identity_first,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def bind_identity(pod: str | None, ordinal: int | None, role: str | None) -> None:
    """Attach the pod's identity to every following line."""
    structlog.contextvars.bind_contextvars(pod=pod, ordinal=ordinal, role=role)


def get_logger() -> Any:
    """The agent's logger (a structlog bound logger)."""
    return structlog.get_logger()
