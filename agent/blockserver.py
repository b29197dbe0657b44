"""The agent's block layer: a Unix-socket server speaking common.wire.blockio.

Each connection is served by one task that answers its requests strictly in order. A WRITE is
acknowledged once it is written to the source image and recorded by the tracker (the write
callback does both, and may first wait for back-pressure room). Any refusal (bad disk index,
out of bounds, a write number that does not increase) is an error reply that changes nothing;
a header that breaks the protocol closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.disk import DiskBoundsError, DiskImage, WritesStopped
from agent.tracker import WnumError
from common import logging as dlog
from common.tasks import cancel_and_wait
from common.wire import blockio as bio

log = dlog.get("drlab.agent.blockserver")

WriteFn = Callable[[int, int, int, bytes], Awaitable[None]]  # (disk index, wnum, offset, data)


class RequestRefused(ValueError):
    """A well-formed request the agent will not serve."""


class BlockServer:
    def __init__(self, socket_path: Path, disks: list[DiskImage], write: WriteFn) -> None:
        self.socket_path = Path(socket_path)
        self.disks = disks
        self._write = write
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.requests = 0

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket of a previous run
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        log.info("block_server_listening", socket=str(self.socket_path), disks=len(self.disks))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await cancel_and_wait(list(self._conns))
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer), name="block-conn")
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    header = await reader.readexactly(bio.REQUEST_SIZE)
                except asyncio.IncompleteReadError:
                    return  # the client closed the connection
                req = bio.decode_request(header)
                data = await reader.readexactly(req.length) if req.op == bio.Op.WRITE else b""
                writer.write(await self._answer(req, data))
                await writer.drain()
        except (bio.BlockProtocolError, asyncio.IncompleteReadError) as exc:
            log.warning("block_protocol_error", error=str(exc))
        except ConnectionError as exc:
            log.info("block_connection_lost", error=str(exc))
        finally:
            writer.close()

    async def _answer(self, req: bio.Request, data: bytes) -> bytes:
        self.requests += 1
        try:
            payload = await self._dispatch(req, data)
        except (RequestRefused, DiskBoundsError, WnumError, WritesStopped) as exc:
            return bio.encode_error(req.wnum, str(exc))
        except OSError as exc:
            log.error("block_io_failed", op=req.op.name, disk=req.disk, offset=req.offset, error=str(exc))
            return bio.encode_error(req.wnum, f"I/O error: {exc}")
        return bio.encode_response(bio.Status.OK, req.wnum, payload)

    async def _dispatch(self, req: bio.Request, data: bytes) -> bytes:
        if req.op == bio.Op.INFO:
            return bio.info_payload([{"index": i, "name": d.name, "size_bytes": d.size_bytes}
                                     for i, d in enumerate(self.disks)])
        disk = self._disk(req.disk)
        if req.op == bio.Op.WRITE:
            await self._write(req.disk, req.wnum, req.offset, data)
            return b""
        if req.op == bio.Op.READ:
            return disk.pread(req.offset, req.length)
        await asyncio.to_thread(disk.fsync)  # FLUSH
        return b""

    def _disk(self, index: int) -> DiskImage:
        if not 0 <= index < len(self.disks):
            raise RequestRefused(f"no disk with index {index} (the agent has {len(self.disks)})")
        return self.disks[index]
