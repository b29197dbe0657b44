"""A generic NBD server over loopback (protocol: common/wire/nbd.py): the agent serves its disks
with it (agent/nbd.py), the MT its failover views (mt/viewnbd.py).

What is served comes from an :class:`Exports` (export names -> :class:`Export`): looked up at
negotiation, so exports may come and go while the server runs; an export that goes away makes its
own ``read`` / ``write`` / ``flush`` fail (:class:`ExportError`), the server never caches data.

Rules:
- a connection picks one export (EXPORT_NAME, or GO); INFO and LIST answer from the lookup;
  structured replies, STARTTLS and unknown options are refused (simple replies only);
- each connection answers its requests strictly in order; a request is answered once the
  export's coroutine returned (its effect durable as the export defines);
- WRITE, TRIM and WRITE_ZEROES run holding the export's ``write_lock`` for the whole command (the
  zeros of TRIM / WRITE_ZEROES are ``write`` calls of at most ``zero_chunk`` bytes), so writes of
  one lock never interleave; FLUSH = ``flush``; FUA on a command that writes = it, then ``flush``;
- a request that cannot run gets an NBD errno reply and changes nothing (EINVAL: outside the
  export or malformed; EIO: the export failed; :class:`ExportError` names its own errno); bytes
  that break the framing (bad magic, an option too long to read, a WRITE payload too long to skip)
  close the connection; negotiation must finish within ``handshake_timeout_s``;
- :meth:`NbdServer.stop` lets a request in progress finish, then closes every connection;
- the listen address must be loopback: there is no authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol

from common import errors
from common import logging as dlog
from common.config import NBD_PORT, is_loopback
from common.errors import ConfigError
from common.wire import nbd as wn

MAX_OPTIONS = 256  # options one connection may send before it must pick an export
STOP_GRACE_S = 5.0


class Export(Protocol):
    """One export. ``write`` may return a number the backend gave the write (the agent's write
    number), kept in the stats; ``None`` otherwise."""

    name: str
    size_bytes: int
    write_lock: asyncio.Lock

    async def read(self, offset: int, length: int) -> bytes: ...

    async def write(self, offset: int, data: bytes) -> int | None: ...

    async def flush(self) -> None: ...


class Exports(Protocol):
    def names(self) -> list[str]: ...

    def get(self, name: str) -> Export | None: ...


class ExportError(Exception):
    """An export refuses or fails a request: the reply carries ``errno``."""

    def __init__(self, errno: wn.Errno, message: str) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class OptionAnswer:
    """What the server does with one negotiation option."""

    reply: bytes = b""  # bytes to send (option replies, or the EXPORT_NAME reply)
    export: Export | None = None  # enter transmission on this export (after sending ``reply``)
    close: bool = False  # hang up (after sending ``reply``)
    note: str = ""  # why, for the log


def answer_option(option: int, data: bytes, exports: Exports, *, no_zeroes: bool, max_payload: int) -> OptionAnswer:
    """Negotiation (pure but for the lookup); simple replies only."""
    if option == wn.Opt.EXPORT_NAME:  # no error reply exists: an unknown export hangs up
        try:
            export = exports.get(wn.decode_name(data))
        except wn.NbdProtocolError as exc:
            return OptionAnswer(close=True, note=f"EXPORT_NAME: {exc}")
        if export is None:
            return OptionAnswer(close=True, note=f"EXPORT_NAME: unknown export {data[:64]!r}")
        return OptionAnswer(wn.encode_export_name_reply(export.size_bytes, wn.SERVED_FLAGS, no_zeroes), export=export)
    if option == wn.Opt.ABORT:
        return OptionAnswer(wn.encode_option_reply(option, wn.Rep.ACK), close=True, note="ABORT")
    if option == wn.Opt.LIST:
        if data:
            return _error(option, wn.Rep.ERR_INVALID, "LIST takes no data")
        entries = b"".join(wn.encode_option_reply(option, wn.Rep.SERVER, wn.encode_server_entry(n))
                           for n in exports.names())
        return OptionAnswer(entries + wn.encode_option_reply(option, wn.Rep.ACK))
    if option in (wn.Opt.INFO, wn.Opt.GO):
        return _info(option, data, exports, max_payload)
    if option == wn.Opt.STRUCTURED_REPLY:
        return _error(option, wn.Rep.ERR_UNSUP, "this server sends simple replies only")
    return _error(option, wn.Rep.ERR_UNSUP, f"option {option} is not supported")


def _info(option: int, data: bytes, exports: Exports, max_payload: int) -> OptionAnswer:
    try:
        req = wn.decode_info_request(data)
    except wn.NbdProtocolError as exc:
        return _error(option, wn.Rep.ERR_INVALID, str(exc))
    export = exports.get(req.name)
    if export is None:
        return _error(option, wn.Rep.ERR_UNKNOWN, f"no export {req.name!r}; exports: {', '.join(exports.names())}")
    infos = [wn.encode_info_export(export.size_bytes, wn.SERVED_FLAGS),
             wn.encode_info_block_size(1, wn.PREFERRED_BLOCK_BYTES, max_payload)]
    if wn.Info.NAME in req.infos:
        infos.append(wn.encode_info_name(export.name))
    reply = b"".join(wn.encode_option_reply(option, wn.Rep.INFO, item) for item in infos)
    reply += wn.encode_option_reply(option, wn.Rep.ACK)
    return OptionAnswer(reply, export=export if option == wn.Opt.GO else None)


def _error(option: int, rep: wn.Rep, message: str) -> OptionAnswer:
    return OptionAnswer(wn.encode_option_reply(option, rep, message.encode()[:wn.MAX_NAME_BYTES]),
                        note=f"{rep.name}: {message}")


@dataclass
class NbdStats:
    connections: int = 0
    requests: int = 0
    refused: int = 0  # requests answered with an errno
    protocol_errors: int = 0  # connections closed for breaking the framing
    writes: int = 0  # export write calls
    bytes_written: int = 0
    bytes_read: int = 0
    flushes: int = 0
    last_wnum: int = 0  # the highest number an export's write returned


class _Conn:
    """One client connection: its task, its export and whether a request is in progress."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.task: asyncio.Task[None] | None = None
        self.export: Export | None = None
        self.busy = False
        self.requests = 0
        self.writes = 0
        self.last_wnum = 0


class NbdServer:
    def __init__(self, exports: Exports, *, host: str = "127.0.0.1", port: int = NBD_PORT,
                 max_payload: int = wn.MAX_PAYLOAD_BYTES, zero_chunk: int = wn.ZERO_CHUNK_BYTES,
                 handshake_timeout_s: float = 30.0, logger: str = "drlab.nbd") -> None:
        if not is_loopback(host):
            raise ConfigError(f"NBD listen address {host!r} is not a loopback address")
        self.exports = exports
        self.host = host
        self.port = port  # the bound port once started (``port=0`` picks one)
        self.max_payload = max_payload
        self.handshake_timeout_s = handshake_timeout_s
        self.log = dlog.get(logger)
        self._zeros = bytes(zero_chunk)
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Conn] = set()
        self._stopping = False
        self.stats = NbdStats()

    async def start(self) -> None:
        self._stopping = False
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.log.info("nbd_listening", host=self.host, port=self.port, exports=self.exports.names(),
                      max_payload=self.max_payload)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop accepting; let requests in progress finish (up to ``grace_s``), close the rest."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        tasks = [c.task for c in self._conns if c.task is not None]
        for conn in list(self._conns):
            if not conn.busy and conn.task is not None:
                conn.task.cancel()  # idle: waiting for a request or in negotiation
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._server.wait_closed()
        self._server = None
        self.log.info("nbd_stopped", **vars(self.stats))

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        conn.task = asyncio.create_task(self._serve(conn), name=f"nbd-conn-{conn.peer}")
        self._conns.add(conn)
        conn.task.add_done_callback(lambda _t: self._conns.discard(conn))

    # ------------------------------------------------------------ a connection

    async def _serve(self, conn: _Conn) -> None:
        self.stats.connections += 1
        self.log.info("nbd_client_connected", peer=conn.peer)
        try:
            async with asyncio.timeout(self.handshake_timeout_s):
                conn.export = await self._negotiate(conn)
            if conn.export is not None:
                self.log.info("nbd_export_opened", peer=conn.peer, export=conn.export.name)
                await self._transmit(conn, conn.export)
        except wn.NbdProtocolError as exc:
            self.stats.protocol_errors += 1
            self.log.warning("nbd_protocol_error", peer=conn.peer, error=str(exc))
        except TimeoutError:
            self.log.warning("nbd_handshake_timeout", peer=conn.peer, timeout_s=self.handshake_timeout_s)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                self.stats.protocol_errors += 1
                self.log.warning("nbd_protocol_error", peer=conn.peer, error=f"truncated: {len(exc.partial)} bytes")
        except ConnectionError as exc:
            self.log.info("nbd_connection_lost", peer=conn.peer, error=str(exc))
        finally:
            conn.writer.close()
            self.log.info("nbd_client_disconnected", peer=conn.peer,
                          export=conn.export.name if conn.export is not None else None,
                          requests=conn.requests, writes=conn.writes, last_wnum=conn.last_wnum)

    async def _negotiate(self, conn: _Conn) -> Export | None:
        """Greeting, client flags, then options until one picks an export (None: hang up)."""
        conn.writer.write(wn.encode_greeting())
        await conn.writer.drain()
        flags = wn.decode_client_flags(await conn.reader.readexactly(wn.CLIENT_FLAGS.size))
        no_zeroes = wn.ClientFlag.C_NO_ZEROES in flags
        for _ in range(MAX_OPTIONS):
            header = wn.decode_option_header(await conn.reader.readexactly(wn.OPTION.size))
            if header.too_big:
                if header.option != wn.Opt.EXPORT_NAME:
                    conn.writer.write(wn.encode_option_reply(header.option, wn.Rep.ERR_TOO_BIG, b"option too long"))
                    await conn.writer.drain()
                raise wn.NbdProtocolError(f"option {header.option} carries {header.length} bytes, "
                                          f"over {wn.MAX_OPTION_BYTES}")
            data = await conn.reader.readexactly(header.length)
            answer = answer_option(header.option, data, self.exports, no_zeroes=no_zeroes,
                                   max_payload=self.max_payload)
            if answer.note:  # refusals are part of negotiation (clients probe), closes are worth a line
                (self.log.info if answer.close else self.log.debug)(
                    "nbd_option_answered", peer=conn.peer, option=header.option, note=answer.note)
            conn.writer.write(answer.reply)
            await conn.writer.drain()
            if answer.close:
                return None
            if answer.export is not None:
                return answer.export
        raise wn.NbdProtocolError(f"no export chosen after {MAX_OPTIONS} options")

    async def _transmit(self, conn: _Conn, export: Export) -> None:
        while not self._stopping:
            try:
                header = await conn.reader.readexactly(wn.REQUEST.size)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                return  # the client hung up between requests
            req = wn.decode_request(header)
            conn.busy = True
            try:
                if not await self._request(conn, export, req):
                    return
            finally:
                conn.busy = False

    async def _request(self, conn: _Conn, export: Export, req: wn.Request) -> bool:
        """Serve one request; False to close the connection."""
        conn.requests += 1
        self.stats.requests += 1
        verdict = wn.check_request(req, export.size_bytes, self.max_payload)
        if verdict.error:
            self.stats.refused += 1
            self.log.warning("nbd_request_refused", peer=conn.peer, export=export.name, cmd=req.cmd,
                             offset=req.offset, length=req.length, error=verdict.error.name,
                             reason=verdict.reason, close=verdict.close)
            await _skip(conn.reader, verdict.skip)
            await self._reply(conn, req.handle, verdict.error)
            return not verdict.close
        cmd = wn.Cmd(req.cmd)
        if cmd is wn.Cmd.DISC:
            self.log.info("nbd_client_disc", peer=conn.peer, export=export.name)
            return False
        data = await conn.reader.readexactly(req.length) if cmd is wn.Cmd.WRITE else b""
        try:
            payload = await self._run(conn, export, cmd, req, data)
        except (ExportError, OSError, errors.DrlabError) as exc:
            self.stats.refused += 1
            err = errno_of(exc)
            self.log.error("nbd_request_failed", peer=conn.peer, export=export.name, cmd=cmd.name,
                           offset=req.offset, length=req.length, errno=err.name, error=str(exc))
            await self._reply(conn, req.handle, err)
            return True
        await self._reply(conn, req.handle, wn.Errno.OK, payload)
        return True

    async def _run(self, conn: _Conn, export: Export, cmd: wn.Cmd, req: wn.Request, data: bytes) -> bytes:
        if cmd is wn.Cmd.READ:
            out = await export.read(req.offset, req.length)
            self.stats.bytes_read += len(out)
            return out
        if cmd is wn.Cmd.FLUSH:
            await self._flush(export)
            return b""
        async with export.write_lock:
            if cmd is wn.Cmd.WRITE:
                await self._write(conn, export, req.offset, data)
            else:  # TRIM, WRITE_ZEROES: the range reads as zeros afterwards
                for offset, length in wn.zero_pieces(req.offset, req.length, len(self._zeros)):
                    zeros = self._zeros if length == len(self._zeros) else bytes(length)
                    await self._write(conn, export, offset, zeros)
                    await asyncio.sleep(0)  # let other work (the agent's batch clock) run between pieces
        if req.fua:
            await self._flush(export)
        return b""

    async def _write(self, conn: _Conn, export: Export, offset: int, data: bytes) -> None:
        if not data:
            return
        wnum = await export.write(offset, data)
        conn.writes += 1
        self.stats.writes += 1
        self.stats.bytes_written += len(data)
        if wnum is not None:
            conn.last_wnum = wnum
            self.stats.last_wnum = max(self.stats.last_wnum, wnum)

    async def _flush(self, export: Export) -> None:
        await export.flush()
        self.stats.flushes += 1

    async def _reply(self, conn: _Conn, handle: int, error: int, payload: bytes = b"") -> None:
        conn.writer.write(wn.encode_simple_reply(handle, error))
        if payload:
            conn.writer.write(payload)
        await conn.writer.drain()


def errno_of(exc: BaseException) -> wn.Errno:
    """The NBD errno a failed request gets: an ExportError's own, EINVAL for a bad request, else EIO."""
    if isinstance(exc, ExportError):
        return exc.errno
    if isinstance(exc, errors.BadRequest):
        return wn.Errno.EINVAL
    return wn.Errno.EIO


async def _skip(reader: asyncio.StreamReader, nbytes: int, piece: int = 1 << 20) -> None:
    """Read and drop ``nbytes`` (an oversized or refused WRITE's payload), a piece at a time."""
    while nbytes > 0:
        got = await reader.readexactly(min(piece, nbytes))
        nbytes -= len(got)
