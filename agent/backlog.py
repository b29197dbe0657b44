"""Back-pressure: the write path waits while too many bytes are not yet durable at the PS.

The measured quantity is whatever ``measure()`` returns (tracked-but-uncut bytes plus bytes of
batches the PS has not acknowledged). Whoever lowers it calls :meth:`Backlog.notify`. No write
is ever dropped: a writer just waits for room.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Backlog:
    def __init__(self, max_bytes: int, measure: Callable[[], int]) -> None:
        self.max_bytes = max_bytes
        self._measure = measure
        self._waiters: list[asyncio.Future[None]] = []
        self.waits = 0  # how many times a caller had to wait (a metric)

    @property
    def bytes(self) -> int:
        return self._measure()

    def has_room(self) -> bool:
        return self._measure() <= self.max_bytes

    async def wait_room(self) -> None:
        if self.has_room():
            return
        self.waits += 1
        while not self.has_room():
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    def notify(self) -> None:
        """The backlog may have shrunk: wake every waiter to re-check."""
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
