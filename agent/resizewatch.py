"""The agent sees a disk resized: its image file's size differs from the size it protects.

Rules (cs/resize.py has the CS's side):

- Every ``interval_s`` (the heartbeat interval) each disk's file size is read (``fstat``). A size
  that differs from the disk's ``size_bytes`` (the size the agent registered and protects) is a
  resize; the agent reports every disk at its file's size (``PUT /v1/machines/self/disks``), once
  per new size (again after a failed report).
- The disk keeps serving its old size (a shrunk one: the smaller of the two): no write past it is
  taken, so none is sent. The CS stops the disk's replication (it leaves the agent's settings)
  until protection is disabled and enabled again; the agent then adopts the new size
  (:func:`adopt`) when its settings give the disk again at its file's size.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agent.disk import DiskImage
from common import errors
from common import logging as dlog

log = dlog.get("drlab.agent.resize")

Report = Callable[[dict[str, Any]], Awaitable[Any]]


def resized(disks: Sequence[DiskImage]) -> dict[str, int]:
    """{disk name: its file's size} of the disks whose file size differs from their size."""
    out = {}
    for disk in disks:
        size = disk.file_size()
        if size != disk.size_bytes:
            out[disk.name] = size
    return out


def adopt(disk: DiskImage, size_bytes: int) -> bool:
    """Take ``size_bytes`` (the settings' size of a disk protected again) when the file has that size."""
    if size_bytes == disk.size_bytes or disk.file_size() != size_bytes:
        return False
    log.info("disk_size_adopted", name=disk.name, old=disk.size_bytes, new=size_bytes)
    disk.size_bytes, disk.limit_bytes = size_bytes, size_bytes
    return True


class ResizeWatch:
    def __init__(self, disks: Sequence[DiskImage], report: Report, interval_s: float) -> None:
        self.disks = list(disks)
        self.report = report
        self.interval_s = interval_s
        self.reported: dict[str, int] = {}  # disk name -> the resized size last reported
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> dict[str, int]:
        """Report new resizes; returns {name: new size} of those reported now."""
        found = resized(self.disks)
        for disk in self.disks:  # never write past the smaller size
            disk.limit_bytes = min(disk.size_bytes, found.get(disk.name, disk.size_bytes))
        new = {n: s for n, s in found.items() if self.reported.get(n) != s}
        if not new:
            return {}
        body = {"disks": [{"name": d.name, "size_bytes": found.get(d.name, d.size_bytes)} for d in self.disks]}
        await self.report(body)
        self.reported.update(new)
        for name, size in new.items():
            log.warning("disk_resize_reported", name=name, size_bytes=size)
        return new

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="resize-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except (errors.DrlabError, OSError) as exc:
                log.warning("disk_resize_check_failed", error=str(exc))
            await asyncio.sleep(self.interval_s)
