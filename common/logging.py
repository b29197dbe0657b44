"""structlog setup: JSON lines to a file per daemon, readable lines on a terminal.

Keys that could carry a secret are redacted before any renderer sees them. Every event carries
``component``: the daemon of the logger's name (``drlab.<role>.*``: cs, ps, mt, agent), else the
one given to :func:`setup` (events from worker threads too, where context variables are not seen).
Events about a disk's batch carry ``disk``, ``gen`` and ``seq`` (bound by the PS ingest and upload
pipelines and the MT ingest and apply workers).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import structlog

SECRET_KEYS = frozenset({"passphrase", "key", "key_b64", "secret", "password", "proof", "token", "private_key"})


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for k in list(event):
        if k in SECRET_KEYS:
            event[k] = "***"
    return event


ROLES = frozenset({"cs", "ps", "mt", "agent"})


def component_of(logger_name: str) -> str | None:
    """``drlab.ps.uploader`` -> ``ps``; None for a logger of no daemon (``drlab.http``)."""
    parts = logger_name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "drlab" and parts[1] in ROLES else None


def _by_logger(logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    role = component_of(str(getattr(logger, "name", "") or event.get("logger", "") or ""))
    if role is not None:
        event.setdefault("component", role)
    return event


def _default_component(component: str) -> Any:
    def processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("component", component)
        return event
    return processor


def setup(component: str, log_file: Path | None = None, level: int = logging.INFO) -> None:
    """Route structlog through stdlib logging: JSON to ``log_file``, console text to stderr."""
    pre_chain: list[Any] = [
        _by_logger,  # before the context's component: several daemons may share a process (tests)
        structlog.contextvars.merge_contextvars,
        _default_component(component),
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*pre_chain, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()), foreign_pre_chain=pre_chain))
    root.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(), foreign_pre_chain=pre_chain))
        root.addHandler(fh)
    structlog.contextvars.bind_contextvars(component=component)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get(name: str = "drlab") -> Any:
    return structlog.get_logger(name)
