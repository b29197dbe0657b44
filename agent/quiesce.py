"""Quiescing a machine for a bookmark (agent/bookmarks.py): the hooks run around a freeze, and the
guard that holds the freeze.

Rules:
- a hook runs without a shell, with its environment added; one that outlives its timeout has its
  process group killed (and is waited for at most ``KILL_WAIT_S``); a hook's own failure never
  raises: it is a :class:`HookResult` with ``ok`` False;
- a :class:`FreezeGuard` is one freeze of the machine's writes: acquired by a deadline (a freeze
  that comes through after it is let go at once), held at most ``hold_s`` (a watchdog releases it
  then), released exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Protocol

from common import logging as dlog

log = dlog.get("drlab.agent.bookmarks")  # the bookmarks' log: these events are steps of a bookmark

HOOK_OUTPUT_CHARS = 2000
KILL_WAIT_S = 5.0  # a killed hook is waited for this long


class Replicating(Protocol):
    """What bookmarks need of :class:`agent.replication.Replicator`."""

    pipelines: dict[int, Any]

    async def freeze(self) -> None: ...

    def thaw(self) -> None: ...

    def bookmark(self, tag: bytes) -> dict[str, tuple[int, int]]: ...


# ------------------------------------------------------------------------------------ hooks


@dataclass(frozen=True)
class HookResult:
    ok: bool
    status: int | None  # exit status; None if it could not start or was killed
    seconds: float
    output: str
    error: str | None = None


async def run_hook(argv: list[str], timeout_s: float, env: dict[str, str]) -> HookResult:
    """Run ``argv`` (no shell) with ``env`` added to the environment; kill its process group if it
    outlives ``timeout_s``. Never raises for the hook's own failure."""
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True)
    except OSError as exc:
        return HookResult(False, None, time.monotonic() - started, "", f"cannot run {argv[0]!r}: {exc}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), max(0.0, timeout_s))
    except TimeoutError:
        await _kill(proc)
        return HookResult(False, None, time.monotonic() - started, "", f"timed out after {timeout_s:.3g} s (killed)")
    except asyncio.CancelledError:
        await _kill(proc)
        raise
    text = out.decode(errors="replace")[-HOOK_OUTPUT_CHARS:]
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        return HookResult(False, proc.returncode, seconds, text, f"exited with status {proc.returncode}")
    return HookResult(True, 0, seconds, text)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:  # bounded: a stop must not hang on a child that was reaped elsewhere
        await asyncio.wait_for(proc.wait(), KILL_WAIT_S)
    except TimeoutError:
        log.error("hook_not_reaped", pid=proc.pid, wait_s=KILL_WAIT_S)


# ------------------------------------------------------------------------------------ freeze


class FreezeGuard:
    """One freeze of the machine's writes: acquired by a deadline, released exactly once — by
    :meth:`release` or by the watchdog at ``hold_s`` after it was acquired."""

    def __init__(self, replicator: Replicating) -> None:
        self._rep = replicator
        self._state = "waiting"  # waiting -> held -> released (or waiting -> released: never held)
        self._watchdog: asyncio.TimerHandle | None = None
        self.frozen_at = 0.0  # monotonic
        self.released_at = 0.0
        self.deadline = 0.0
        self.by_watchdog = False

    @property
    def held(self) -> bool:
        return self._state == "held"

    @property
    def held_s(self) -> float:
        end = self.released_at if self._state == "released" else time.monotonic()
        return max(0.0, end - self.frozen_at) if self.frozen_at else 0.0

    async def acquire(self, timeout_s: float, hold_s: float) -> bool:
        """Freeze within ``timeout_s`` (False if writes could not be held by then)."""
        task = asyncio.create_task(self._rep.freeze(), name="bookmark-freeze")
        task.add_done_callback(lambda t: self._acquired(t, hold_s))
        try:
            await asyncio.wait({task}, timeout=max(0.0, timeout_s))
        finally:
            if self._state == "waiting":  # timed out (or we are cancelled): never hold it after this
                self._state = "abandoned"
                task.cancel()
        return self.held

    def _acquired(self, task: asyncio.Task[None], hold_s: float) -> None:
        if task.cancelled() or task.exception() is not None:
            if self._state == "waiting":
                self._state = "released"
            return
        if self._state == "abandoned":  # we gave up before the freeze came through: let go at once
            self._state = "released"
            self._rep.thaw()
            return
        self._state = "held"
        self.frozen_at = time.monotonic()
        self.deadline = self.frozen_at + hold_s
        self._watchdog = asyncio.get_running_loop().call_later(hold_s, self._expire)

    def _expire(self) -> None:
        if self.held:
            self.by_watchdog = True
            log.warning("freeze_deadline_reached", held_s=round(self.held_s, 3))
            self.release()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic()) if self.held else 0.0

    def release(self) -> bool:
        """Thaw if held; True if this call thawed."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._state != "held":
            if self._state == "waiting":
                self._state = "abandoned"
            return False
        self._state = "released"
        self.released_at = time.monotonic()
        self._rep.thaw()
        return True
