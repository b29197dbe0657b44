"""structlog setup: JSON lines to a file per daemon, readable lines on a terminal.

Keys that could carry a secret are redacted before any renderer sees them.
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


def setup(component: str, log_file: Path | None = None, level: int = logging.INFO) -> None:
    """Route structlog through stdlib logging: JSON to ``log_file``, console text to stderr."""
    pre_chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
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
