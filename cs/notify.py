"""Wakes settings long-polls when the global settings version moves.

In-process changes call :meth:`VersionWatch.changed`, which wakes every waiter at once; each
waiter also re-reads the version from the database every ``recheck_s`` seconds, so a change
made by another CS process on the same database is seen too, only later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

VersionReader = Callable[[], Awaitable[int]]


class VersionWatch:
    def __init__(self, read_version: VersionReader, *, recheck_s: float = 1.0) -> None:
        self._read = read_version
        self._recheck_s = recheck_s
        self._ticks = 0
        self._closed = False
        self._cond = asyncio.Condition()

    async def close(self) -> None:
        """Release every waiter now (the server is stopping)."""
        async with self._cond:
            self._closed = True
            self._cond.notify_all()

    async def changed(self) -> None:
        async with self._cond:
            self._ticks += 1
            self._cond.notify_all()

    async def wait_newer(self, than: int, timeout_s: float) -> int:
        """The current version once it is > ``than``, or when ``timeout_s`` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        while True:
            seen = self._ticks
            current = await self._read()
            remaining = deadline - loop.time()
            if current > than or remaining <= 0 or self._closed:
                return current
            await self._wait_tick(seen, min(remaining, self._recheck_s))

    async def _wait_tick(self, seen: int, timeout_s: float) -> None:
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: self._ticks != seen or self._closed), timeout_s)
            except TimeoutError:
                pass
