"""asyncio client of the agent's local block protocol (common/wire/blockio) over a Unix socket.

One request is in flight per client (a lock keeps callers in order). Every call has a
timeout. Errors:
- :class:`BlockIOError` — the agent answered status ERROR (its message is kept); the
  connection stays usable.
- :class:`common.errors.TransportError` (retriable) — could not connect, the connection broke,
  a call timed out, or the reply broke the protocol. The connection is closed: whether the
  request took effect is unknown, so a WRITE that ends this way must not be logged as done.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from common.errors import DrlabError, TransportError
from common.wire import blockio as bio


class BlockIOError(DrlabError):
    """The agent refused or failed a request (bounds, unknown disk, I/O error)."""

    code = "block_io"
    status = 400


class BlockClient:
    def __init__(self, socket_path: Path | str, *, timeout_s: float = 30.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        if self._writer is not None:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                self._reader, self._writer = await asyncio.open_unix_connection(
                    self.socket_path, limit=bio.MAX_LENGTH + bio.RESPONSE_SIZE)
        except (OSError, TimeoutError) as exc:
            raise TransportError(f"cannot connect to agent socket {self.socket_path}: {exc!r}") from exc

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            async with asyncio.timeout(self.timeout_s):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            pass

    async def __aenter__(self) -> BlockClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write(self, disk_index: int, wnum: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``; returns once the agent acknowledged it."""
        reply = await self._call(bio.encode_request(bio.Op.WRITE, disk_index, wnum=wnum, offset=offset, data=data),
                                 wnum)
        if reply:
            raise TransportError(f"WRITE {wnum}: unexpected {len(reply)} byte reply")

    async def read(self, disk_index: int, offset: int, length: int) -> bytes:
        data = await self._call(bio.encode_request(bio.Op.READ, disk_index, offset=offset, length=length), 0)
        if len(data) != length:
            raise TransportError(f"READ of {length} bytes answered {len(data)}")
        return data

    async def flush(self, disk_index: int = 0) -> None:
        await self._call(bio.encode_request(bio.Op.FLUSH, disk_index), 0)

    async def info(self) -> list[dict[str, Any]]:
        """The agent's disks: ``[{"index", "name", "size_bytes"}]``."""
        try:
            return bio.parse_info(await self._call(bio.encode_request(bio.Op.INFO), 0))
        except bio.BlockProtocolError as exc:
            raise TransportError(str(exc)) from exc

    async def _call(self, request: bytes, wnum: int) -> bytes:
        async with self._lock:
            await self.connect()
            try:
                async with asyncio.timeout(self.timeout_s):
                    resp, payload = await self._exchange(request)
            except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError, bio.BlockProtocolError) as exc:
                await self.close()
                what = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc!r}"
                raise TransportError(f"block request (wnum {wnum}) {what}") from exc
        if resp.wnum != wnum:
            await self.close()
            raise TransportError(f"reply echoes wnum {resp.wnum}, expected {wnum}")
        if resp.status != bio.Status.OK:
            raise BlockIOError(payload.decode(errors="replace") or "agent error")
        return payload

    async def _exchange(self, request: bytes) -> tuple[bio.Response, bytes]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        await self._writer.drain()
        resp = bio.decode_response(await self._reader.readexactly(bio.RESPONSE_SIZE))
        payload = await self._reader.readexactly(resp.length) if resp.length else b""
        return resp, payload
