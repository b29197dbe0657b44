"""A byte-bounded memory copy of what was just made durable (write-through).

The PS's cache (ps/cache.py) and the MT's staging (mt/staging.py) write each batch to a file and
fsync it before they acknowledge it; the upload or the apply that follows a moment later would read
the same bytes back. :class:`Recent` keeps the newest of them in memory within ``max_bytes`` (the
oldest go first), so that the reader skips the read and the check the file needs (bytes in memory
cannot rot on disk). The file stays the authority: a miss — evicted, or after a restart — reads it.
Thread-safe: stores happen on an event loop or a worker thread, reads in worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recent(Generic[K, V]):
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __repr__(self) -> str:
        return f"Recent(items={len(self._items)}, bytes={self._bytes}, max={self.max_bytes})"

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, key: K, value: V, size: int) -> None:
        """Keep ``value`` (``size`` bytes) under ``key``, evicting the oldest to make room; a value
        larger than the whole budget is not kept."""
        with self._lock:
            self._pop(key)
            if size > self.max_bytes:
                return
            while self._bytes + size > self.max_bytes:
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= old
            self._items[key] = (value, size)
            self._bytes += size

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self.hits += 1
            return item[0]

    def pop(self, key: K) -> None:
        with self._lock:
            self._pop(key)

    def drop_where(self, doomed: Callable[[K], bool]) -> None:
        with self._lock:
            for key in [k for k in self._items if doomed(k)]:
                self._pop(key)

    def _pop(self, key: K) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[1]
