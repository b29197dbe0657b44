"""Owned tasks: cancel and wait without swallowing the caller's own cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from common import logging as dlog

log = dlog.get("drlab.agent.tasks")


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel ``tasks`` and wait until they are done. Unlike ``await task`` inside
    ``suppress(CancelledError)``, a cancellation of the caller itself still propagates."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    if live:
        await asyncio.wait(live)
    for t in live:
        if not t.cancelled() and t.exception() is not None:
            log.error("task_failed", task=t.get_name(), error=repr(t.exception()))
