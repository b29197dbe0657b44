"""The MT's failover views served as NBD exports (ARCHITECTURE.md §6: "the view is served to the
cloud machine as a disk"), each named after its view id (the failover job's id), on a loopback
address only (server: common/nbdserver.py; config: MTConfig.view_nbd_port / view_nbd_host).

Rules:
- the exports are the views the job runner holds right now (:attr:`mt.jobs.JobRunner.views`),
  looked up at negotiation: a view made later is served without a restart;
- READ = :meth:`DiskView.read`; WRITE and the zeros of TRIM / WRITE_ZEROES =
  :meth:`DiskView.write` (to the overlay, durable when answered); FLUSH (and FUA) =
  :meth:`DiskView.flush`. All are blocking and run in the MT's executor; the write commands of one
  view run one at a time (its write lock), so overlay writes keep the order they were answered in;
- every request first checks that its connection's view is still the one the runner holds under
  that id: a view dropped, committed, changed to another point, released or reopened makes the
  connection's requests fail with EIO — never data of another view or a closed file;
- before the runner closes, drops or commits a view it calls :meth:`ViewNbd.retire`, which
  returns once no request of that view is in the executor any more (requests already there
  finish, even if their connection is cancelled).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any, TypeVar

from common import nbdserver
from common.config import MTConfig
from common.wire import nbd as wn
from mt.view import DiskView

T = TypeVar("T")


class ViewExport:
    """One connection's view (:class:`common.nbdserver.Export`)."""

    def __init__(self, exports: ViewExports, name: str, view: DiskView, write_lock: asyncio.Lock) -> None:
        self._exports = exports
        self.name = name
        self.view = view
        self.size_bytes = view.size_bytes
        self.write_lock = write_lock

    async def read(self, offset: int, length: int) -> bytes:
        return await self._exports.run(self, self.view.read, offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        await self._exports.run(self, self.view.write, offset, data)

    async def flush(self) -> None:
        await self._exports.run(self, self.view.flush)


class ViewExports:
    """The views ``views()`` returns (view id -> view, looked up at each use) as exports; counts
    the requests of each view in the executor so that :meth:`retire` can wait for them."""

    def __init__(self, views: Callable[[], Mapping[str, DiskView]], executor: Executor) -> None:
        self._views = views
        self._executor = executor
        self._locks: dict[DiskView, asyncio.Lock] = {}
        self._inflight: dict[DiskView, int] = {}
        self._idle: dict[DiskView, asyncio.Event] = {}

    def names(self) -> list[str]:
        return sorted(self._views())

    def get(self, name: str) -> ViewExport | None:
        view = self._views().get(name)
        if view is None:
            return None
        return ViewExport(self, name, view, self._locks.setdefault(view, asyncio.Lock()))

    async def run(self, export: ViewExport, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the executor if the export's view is still served (EIO otherwise)."""
        view = export.view
        if self._views().get(export.name) is not view:
            raise nbdserver.ExportError(wn.Errno.EIO, f"view {export.name} is no longer served "
                                                      "(dropped, committed, changed or released)")
        try:
            fut = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except RuntimeError as exc:  # the executor shut down: the MT is stopping
            raise nbdserver.ExportError(wn.Errno.ESHUTDOWN, str(exc)) from exc
        self._inflight[view] = self._inflight.get(view, 0) + 1
        fut.add_done_callback(lambda _f: self._leave(view))
        return await asyncio.shield(fut)  # a cancelled request still counts until its thread is done

    def _leave(self, view: DiskView) -> None:
        self._inflight[view] -= 1
        if not self._inflight[view]:
            del self._inflight[view]
            idle = self._idle.pop(view, None)
            if idle is not None:
                idle.set()

    async def retire(self, view: DiskView) -> None:
        """Return once none of ``view``'s requests is running; call after it left the mapping."""
        self._locks.pop(view, None)
        if self._inflight.get(view):
            await self._idle.setdefault(view, asyncio.Event()).wait()


class ViewNbd:
    """The NBD server of an MT's views."""

    def __init__(self, views: Callable[[], Mapping[str, DiskView]], executor: Executor, *, host: str, port: int,
                 handshake_timeout_s: float = 30.0) -> None:
        self.exports = ViewExports(views, executor)
        self.server = nbdserver.NbdServer(self.exports, host=host, port=port, handshake_timeout_s=handshake_timeout_s,
                                          logger="drlab.mt.viewnbd")

    @classmethod
    def from_config(cls, cfg: MTConfig, views: Callable[[], Mapping[str, DiskView]], executor: Executor) -> ViewNbd:
        return cls(views, executor, host=cfg.view_nbd_host or cfg.listen_host, port=cfg.view_nbd_port)

    def url(self, view_id: str) -> str:
        host = self.server.host
        return f"nbd://{f'[{host}]' if ':' in host else host}:{self.server.port}/{view_id}"

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def retire(self, view: DiskView) -> None:
        await self.exports.retire(view)
