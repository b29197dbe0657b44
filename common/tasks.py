"""Owned tasks: cancel and wait without swallowing the caller's own cancellation."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable
from typing import Any

from common import logging as dlog

log = dlog.get("drlab.tasks")


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None], timeout_s: float | None = None) -> None:
    """Cancel ``tasks`` and wait until they are done (at most ``timeout_s``: a task still running
    then is logged with its stack and left behind, so that a stop never hangs). Unlike ``await
    task`` inside ``suppress(CancelledError)``, a cancellation of the caller itself still propagates."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    pending: set[asyncio.Task[Any]] = set()
    if live:
        _, pending = await asyncio.wait(live, timeout=timeout_s)
    for t in pending:
        stack = io.StringIO()
        t.print_stack(file=stack)
        log.error("task_not_stopped", task=t.get_name(), timeout_s=timeout_s, stack=stack.getvalue()[-2000:])
    for t in live:
        if t not in pending and not t.cancelled() and t.exception() is not None:
            log.error("task_failed", task=t.get_name(), error=repr(t.exception()))
