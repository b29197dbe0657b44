"""The agent's NBD export: each disk served on loopback under its name, so that real block
clients (qemu-io, nbdcopy, qemu-nbd, fio) are the workload (server: common/nbdserver.py,
protocol: common/wire/nbd.py).

Rules (the rest are the server's):
- every write — WRITE, and the zeros of TRIM and WRITE_ZEROES — goes through ``write_next`` (the
  Replicator's), which assigns the machine's next write number, writes the source image and tracks
  the change. Every disk shares one write lock, held for a whole command, so write numbers
  increase across all connections and a TRIM / WRITE_ZEROES is not interleaved with another NBD
  write;
- a request is answered once its effect is on the source image and tracked; FLUSH fsyncs the
  image; READ reads the source image;
- a write outside the disk is EINVAL; one the tracker or a stopped disk refuses is EIO.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agent.disk import DiskBoundsError, DiskImage, WritesStopped
from agent.tracker import WnumError
from common import nbdserver
from common.config import NBD_PORT, AgentConfig
from common.wire import nbd as wn

WriteNextFn = Callable[[int, int, bytes], Awaitable[int]]  # (disk index, offset, data) -> write number
NbdStats = nbdserver.NbdStats


class DiskExport:
    """One disk as an export (:class:`common.nbdserver.Export`)."""

    def __init__(self, index: int, disk: DiskImage, write_next: WriteNextFn, write_lock: asyncio.Lock) -> None:
        self.index = index
        self.disk = disk
        self.name = disk.name
        self.size_bytes = disk.size_bytes
        self.write_lock = write_lock
        self._write_next = write_next

    async def read(self, offset: int, length: int) -> bytes:
        try:
            return self.disk.pread(offset, length)
        except DiskBoundsError as exc:
            raise nbdserver.ExportError(wn.Errno.EINVAL, str(exc)) from exc

    async def write(self, offset: int, data: bytes) -> int:
        try:
            return await self._write_next(self.index, offset, data)
        except DiskBoundsError as exc:
            raise nbdserver.ExportError(wn.Errno.EINVAL, str(exc)) from exc
        except (WnumError, WritesStopped) as exc:
            raise nbdserver.ExportError(wn.Errno.EIO, str(exc)) from exc

    async def flush(self) -> None:
        await asyncio.to_thread(self.disk.fsync)


class DiskExports:
    """The agent's disks by name (fixed for the life of the server)."""

    def __init__(self, disks: list[DiskImage], write_next: WriteNextFn) -> None:
        lock = asyncio.Lock()  # one NBD write command at a time, across disks and connections
        self._by_name = {d.name: DiskExport(i, d, write_next, lock) for i, d in enumerate(disks)}

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> DiskExport | None:
        return self._by_name.get(name)


class NbdServer(nbdserver.NbdServer):
    def __init__(self, disks: list[DiskImage], write_next: WriteNextFn, *, host: str = "127.0.0.1",
                 port: int = NBD_PORT, max_payload: int = wn.MAX_PAYLOAD_BYTES,
                 zero_chunk: int = wn.ZERO_CHUNK_BYTES, handshake_timeout_s: float = 30.0) -> None:
        super().__init__(DiskExports(disks, write_next), host=host, port=port, max_payload=max_payload,
                         zero_chunk=zero_chunk, handshake_timeout_s=handshake_timeout_s, logger="drlab.agent.nbd")
        self.disks = disks

    @classmethod
    def from_config(cls, cfg: AgentConfig, disks: list[DiskImage], write_next: WriteNextFn) -> NbdServer:
        return cls(disks, write_next, host=cfg.nbd_listen_host, port=cfg.nbd_port,
                   max_payload=cfg.nbd_max_request_bytes, handshake_timeout_s=cfg.nbd_handshake_timeout_s)
