"""A small asyncio NBD client (fixed newstyle, NBD_OPT_GO, simple replies): what the workload
writes through to an NBD export (the agent's disks, an MT's failover views).

    async with NbdClient.from_url("nbd://127.0.0.1:10809/NAME") as nbd:
        await nbd.write(0, data); await nbd.flush(); data = await nbd.read(0, 4096)

Rules:
- one request in flight per client (requests are sent and answered in order, under a lock);
- an NBD error reply raises :class:`NbdError` (not retriable: the server refused or failed the
  request; ``errno`` is the protocol's number); a connection that could not be made, broke, timed
  out or sent bytes that break the framing raises :class:`common.errors.TransportError`
  (retriable: a write may or may not have reached the export) and the client is closed;
- reads and writes longer than the server's maximum (the BLOCK_SIZE info, else 32 MiB) are
  split; a range outside the export is refused locally (BadRequest), nothing sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import unquote, urlsplit

from common import errors
from common.config import NBD_PORT
from common.wire import nbd as wn


class NbdError(errors.DrlabError):
    """The server answered a request with an NBD errno."""

    code, status = "nbd_error", 502

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class NbdUrl:
    host: str
    port: int
    name: str

    def __str__(self) -> str:
        return f"nbd://{self.host}:{self.port}/{self.name}"


def parse_url(url: str) -> NbdUrl:
    """``nbd://HOST[:PORT]/NAME`` (port 10809 by default); BadRequest for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "nbd" or not parts.hostname:
        raise errors.BadRequest(f"not an nbd://HOST[:PORT]/NAME URL: {url!r}")
    try:
        port = parts.port or NBD_PORT
    except ValueError as exc:
        raise errors.BadRequest(f"bad port in {url!r}: {exc}") from exc
    name = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    return NbdUrl(parts.hostname, port, name)


class NbdClient:
    def __init__(self, url: NbdUrl, *, timeout_s: float = 30.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.size_bytes = 0
        self.flags = 0
        self.max_payload = wn.MAX_PAYLOAD_BYTES
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._handle = 0

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 30.0) -> NbdClient:
        return cls(parse_url(url), timeout_s=timeout_s)

    async def __aenter__(self) -> NbdClient:
        await self.connect()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and negotiate the export (NBD_OPT_GO); NbdError if the server does not have it."""
        try:
            async with asyncio.timeout(self.timeout_s):
                self._reader, self._writer = await asyncio.open_connection(self.url.host, self.url.port)
                await self._negotiate()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, wn.NbdProtocolError) as exc:
            await self.close()
            raise errors.TransportError(f"NBD {self.url}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    async def _negotiate(self) -> None:
        assert self._reader is not None and self._writer is not None
        magic, opt_magic, _ = wn.GREETING.unpack(await self._reader.readexactly(wn.GREETING.size))
        if (magic, opt_magic) != (wn.NBDMAGIC, wn.IHAVEOPT):
            raise wn.NbdProtocolError("not a fixed-newstyle NBD server")
        self._writer.write(wn.CLIENT_FLAGS.pack(int(wn.ClientFlag.C_FIXED_NEWSTYLE | wn.ClientFlag.C_NO_ZEROES)))
        self._writer.write(wn.encode_option(wn.Opt.GO, wn.encode_info_request(self.url.name, (wn.Info.BLOCK_SIZE,))))
        await self._writer.drain()
        while True:
            option, rep, length = wn.decode_option_reply(await self._reader.readexactly(wn.OPTION_REPLY.size))
            if length > wn.MAX_OPTION_BYTES:
                raise wn.NbdProtocolError(f"option reply of {length} bytes")
            data = await self._reader.readexactly(length)
            if rep == wn.Rep.ACK:
                break
            if rep & (1 << 31):
                raise NbdError(int(wn.Errno.EINVAL), f"NBD {self.url}: export refused ({rep:#x}): "
                                                     f"{data.decode(errors='replace')}")
            if rep == wn.Rep.INFO and len(data) >= 2:
                self._info(data)
        if not self.size_bytes and not self.flags:
            raise wn.NbdProtocolError("GO acknowledged without the export's size")

    def _info(self, data: bytes) -> None:
        kind = wn.U16.unpack_from(data)[0]
        if kind == wn.Info.EXPORT and len(data) == wn.INFO_EXPORT.size:
            _, self.size_bytes, self.flags = wn.INFO_EXPORT.unpack(data)
        elif kind == wn.Info.BLOCK_SIZE and len(data) == wn.INFO_BLOCK_SIZE.size:
            maximum = wn.INFO_BLOCK_SIZE.unpack(data)[3]
            self.max_payload = max(4096, min(maximum, wn.MAX_PAYLOAD_BYTES))

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        try:
            writer.write(wn.encode_request(wn.Cmd.DISC, 0))
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 2.0)
        except (OSError, TimeoutError):
            pass

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            raise errors.BadRequest(f"range {offset}+{length} is outside the export ({self.size_bytes} bytes)")

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        parts = []
        for pos in range(offset, offset + length, self.max_payload):
            n = min(self.max_payload, offset + length - pos)
            parts.append(await self._request(wn.Cmd.READ, pos, n))
        return b"".join(parts)

    async def write(self, offset: int, data: bytes, *, fua: bool = False) -> None:
        self._check(offset, len(data))
        view = memoryview(data)
        for pos in range(0, len(data), self.max_payload):
            await self._request(wn.Cmd.WRITE, offset + pos, data=bytes(view[pos:pos + self.max_payload]),
                                flags=int(wn.CmdFlag.FUA) if fua else 0)

    async def write_zeroes(self, offset: int, length: int) -> None:
        self._check(offset, length)
        await self._request(wn.Cmd.WRITE_ZEROES, offset, length)

    async def flush(self) -> None:
        await self._request(wn.Cmd.FLUSH)

    async def _request(self, cmd: wn.Cmd, offset: int = 0, length: int = 0, *, data: bytes = b"",
                       flags: int = 0) -> bytes:
        async with self._lock:
            if self._reader is None or self._writer is None:
                raise errors.TransportError(f"NBD {self.url}: not connected")
            self._handle += 1
            try:
                async with asyncio.timeout(self.timeout_s):
                    self._writer.write(wn.encode_request(cmd, self._handle, offset, length, flags, data))
                    await self._writer.drain()
                    error, handle = wn.decode_simple_reply(await self._reader.readexactly(wn.SIMPLE_REPLY.size))
                    if handle != self._handle:
                        raise wn.NbdProtocolError(f"reply for handle {handle}, expected {self._handle}")
                    payload = await self._reader.readexactly(length) if cmd is wn.Cmd.READ and not error else b""
            except (OSError, TimeoutError, asyncio.IncompleteReadError, wn.NbdProtocolError) as exc:
                await self.close()
                raise errors.TransportError(f"NBD {self.url}: {cmd.name} broke: {type(exc).__name__}: {exc}") from exc
        if error:
            name = wn.Errno(error).name if error in wn.Errno._value2member_map_ else str(error)
            raise NbdError(error, f"NBD {self.url}: {cmd.name} [{offset}, +{length or len(data)}) failed: {name}")
        return payload


class NbdBlockClient:
    """One export in the shape of the agent's block client (agent/blockclient.py), for the
    workload's ``--nbd`` mode: the export is disk ``index``; write numbers are the caller's (logged
    by it, not sent)."""

    def __init__(self, url: str, index: int = 0, *, timeout_s: float = 30.0) -> None:
        self.nbd = NbdClient.from_url(url, timeout_s=timeout_s)
        self.index = index

    async def __aenter__(self) -> NbdBlockClient:
        await self.nbd.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nbd.close()

    def _disk(self, disk_index: int) -> None:
        if disk_index != self.index:
            raise errors.BadRequest(f"the NBD export {self.nbd.url} is disk {self.index}, not {disk_index}")

    async def info(self) -> list[dict[str, int]]:
        return [{"index": self.index, "size_bytes": self.nbd.size_bytes}]

    async def write(self, disk_index: int, wnum: int, offset: int, data: bytes) -> None:
        self._disk(disk_index)
        await self.nbd.write(offset, data)

    async def read(self, disk_index: int, offset: int, length: int) -> bytes:
        self._disk(disk_index)
        return await self.nbd.read(offset, length)

    async def flush(self, disk_index: int = 0) -> None:
        self._disk(disk_index)
        await self.nbd.flush()
