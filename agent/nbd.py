"""The agent's NBD export: each disk served on loopback under its name, so that real block
clients (qemu-io, nbdcopy, qemu-nbd, fio) are the workload (protocol: common/wire/nbd.py).

Rules:
- every write — WRITE, and the zeros of TRIM and WRITE_ZEROES (in pieces of at most
  ``zero_chunk`` bytes) — goes through ``write_next`` (the Replicator's), which assigns the
  machine's next write number, writes the source image and tracks the change. One lock is held
  around ``write_next`` across all connections, for a whole command, so write numbers increase
  and a TRIM / WRITE_ZEROES is not interleaved with another NBD write;
- a request is answered once its effect is on the source image and tracked; FLUSH fsyncs the
  image; FUA on a command that writes = the write, then an fsync; READ reads the source image;
- each connection answers its requests strictly in order (simple replies, no structured ones);
- a request that cannot run gets an NBD errno reply and changes nothing; bytes that break the
  framing (bad magic, an option too long to read, a WRITE payload too long to skip) close the
  connection; negotiation must finish within ``handshake_timeout_s``;
- :meth:`NbdServer.stop` lets a request in progress finish, then closes every connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.disk import DiskBoundsError, DiskImage, WritesStopped
from agent.tasks import cancel_and_wait
from agent.tracker import WnumError
from common import errors
from common import logging as dlog
from common.config import NBD_PORT, AgentConfig, is_loopback
from common.errors import ConfigError
from common.wire import nbd as wn

log = dlog.get("drlab.agent.nbd")

WriteNextFn = Callable[[int, int, bytes], Awaitable[int]]  # (disk index, offset, data) -> write number
MAX_OPTIONS = 256  # options one connection may send before it must pick an export
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class OptionAnswer:
    """What the server does with one negotiation option."""

    reply: bytes = b""  # bytes to send (option replies, or the EXPORT_NAME reply)
    export: int | None = None  # enter transmission on this disk (after sending ``reply``)
    close: bool = False  # hang up (after sending ``reply``)
    note: str = ""  # why, for the log


def answer_option(option: int, data: bytes, disks: list[DiskImage], *, no_zeroes: bool,
                  max_payload: int) -> OptionAnswer:
    """Pure negotiation: export names are disk names; simple replies only."""
    names = {d.name: i for i, d in enumerate(disks)}
    if option == wn.Opt.EXPORT_NAME:  # no error reply exists: an unknown export hangs up
        try:
            index = names.get(wn.decode_name(data))
        except wn.NbdProtocolError as exc:
            return OptionAnswer(close=True, note=f"EXPORT_NAME: {exc}")
        if index is None:
            return OptionAnswer(close=True, note=f"EXPORT_NAME: unknown export {data[:64]!r}")
        disk = disks[index]
        return OptionAnswer(wn.encode_export_name_reply(disk.size_bytes, wn.SERVED_FLAGS, no_zeroes), export=index)
    if option == wn.Opt.ABORT:
        return OptionAnswer(wn.encode_option_reply(option, wn.Rep.ACK), close=True, note="ABORT")
    if option == wn.Opt.LIST:
        if data:
            return _error(option, wn.Rep.ERR_INVALID, "LIST takes no data")
        entries = b"".join(wn.encode_option_reply(option, wn.Rep.SERVER, wn.encode_server_entry(d.name))
                           for d in disks)
        return OptionAnswer(entries + wn.encode_option_reply(option, wn.Rep.ACK))
    if option in (wn.Opt.INFO, wn.Opt.GO):
        return _info(option, data, disks, names, max_payload)
    if option == wn.Opt.STRUCTURED_REPLY:
        return _error(option, wn.Rep.ERR_UNSUP, "this server sends simple replies only")
    return _error(option, wn.Rep.ERR_UNSUP, f"option {option} is not supported")


def _info(option: int, data: bytes, disks: list[DiskImage], names: dict[str, int], max_payload: int) -> OptionAnswer:
    try:
        req = wn.decode_info_request(data)
    except wn.NbdProtocolError as exc:
        return _error(option, wn.Rep.ERR_INVALID, str(exc))
    index = names.get(req.name)
    if index is None:
        return _error(option, wn.Rep.ERR_UNKNOWN, f"no export {req.name!r}; exports: {', '.join(names)}")
    disk = disks[index]
    infos = [wn.encode_info_export(disk.size_bytes, wn.SERVED_FLAGS),
             wn.encode_info_block_size(1, wn.PREFERRED_BLOCK_BYTES, max_payload)]
    if wn.Info.NAME in req.infos:
        infos.append(wn.encode_info_name(disk.name))
    reply = b"".join(wn.encode_option_reply(option, wn.Rep.INFO, item) for item in infos)
    reply += wn.encode_option_reply(option, wn.Rep.ACK)
    return OptionAnswer(reply, export=index if option == wn.Opt.GO else None)


def _error(option: int, rep: wn.Rep, message: str) -> OptionAnswer:
    return OptionAnswer(wn.encode_option_reply(option, rep, message.encode()[:wn.MAX_NAME_BYTES]),
                        note=f"{rep.name}: {message}")


@dataclass
class NbdStats:
    connections: int = 0
    requests: int = 0
    refused: int = 0  # requests answered with an errno
    protocol_errors: int = 0  # connections closed for breaking the framing
    writes: int = 0  # write_next calls
    bytes_written: int = 0
    bytes_read: int = 0
    flushes: int = 0
    last_wnum: int = 0  # the highest write number an NBD write got


class _Conn:
    """One client connection: its task, its export and whether a request is in progress."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.task: asyncio.Task[None] | None = None
        self.export: int | None = None
        self.busy = False
        self.requests = 0
        self.writes = 0
        self.last_wnum = 0


class NbdServer:
    def __init__(self, disks: list[DiskImage], write_next: WriteNextFn, *, host: str = "127.0.0.1",
                 port: int = NBD_PORT, max_payload: int = wn.MAX_PAYLOAD_BYTES,
                 zero_chunk: int = wn.ZERO_CHUNK_BYTES, handshake_timeout_s: float = 30.0) -> None:
        if not is_loopback(host):
            raise ConfigError(f"NBD listen address {host!r} is not a loopback address")
        self.disks = disks
        self.host = host
        self.port = port  # the bound port once started (``port=0`` picks one)
        self.max_payload = max_payload
        self.handshake_timeout_s = handshake_timeout_s
        self._write_next = write_next
        self._zeros = bytes(zero_chunk)
        self._write_lock = asyncio.Lock()  # one NBD write command at a time, across connections
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Conn] = set()
        self._stopping = False
        self.stats = NbdStats()

    @classmethod
    def from_config(cls, cfg: AgentConfig, disks: list[DiskImage], write_next: WriteNextFn) -> NbdServer:
        return cls(disks, write_next, host=cfg.nbd_listen_host, port=cfg.nbd_port,
                   max_payload=cfg.nbd_max_request_bytes, handshake_timeout_s=cfg.nbd_handshake_timeout_s)

    async def start(self) -> None:
        self._stopping = False
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("nbd_listening", host=self.host, port=self.port, exports=[d.name for d in self.disks],
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
            await cancel_and_wait(list(pending))
        await self._server.wait_closed()
        self._server = None
        log.info("nbd_stopped", **vars(self.stats))

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        conn.task = asyncio.create_task(self._serve(conn), name=f"nbd-conn-{conn.peer}")
        self._conns.add(conn)
        conn.task.add_done_callback(lambda _t: self._conns.discard(conn))

    # ------------------------------------------------------------ a connection

    async def _serve(self, conn: _Conn) -> None:
        self.stats.connections += 1
        log.info("nbd_client_connected", peer=conn.peer)
        try:
            async with asyncio.timeout(self.handshake_timeout_s):
                conn.export = await self._negotiate(conn)
            if conn.export is not None:
                log.info("nbd_export_opened", peer=conn.peer, export=self.disks[conn.export].name)
                await self._transmit(conn, conn.export)
        except wn.NbdProtocolError as exc:
            self.stats.protocol_errors += 1
            log.warning("nbd_protocol_error", peer=conn.peer, error=str(exc))
        except TimeoutError:
            log.warning("nbd_handshake_timeout", peer=conn.peer, timeout_s=self.handshake_timeout_s)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                self.stats.protocol_errors += 1
                log.warning("nbd_protocol_error", peer=conn.peer, error=f"truncated: {len(exc.partial)} bytes")
        except ConnectionError as exc:
            log.info("nbd_connection_lost", peer=conn.peer, error=str(exc))
        finally:
            conn.writer.close()
            export = self.disks[conn.export].name if conn.export is not None else None
            log.info("nbd_client_disconnected", peer=conn.peer, export=export, requests=conn.requests,
                     writes=conn.writes, last_wnum=conn.last_wnum)

    async def _negotiate(self, conn: _Conn) -> int | None:
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
            answer = answer_option(header.option, data, self.disks, no_zeroes=no_zeroes, max_payload=self.max_payload)
            if answer.note:  # refusals are part of negotiation (clients probe), closes are worth a line
                (log.info if answer.close else log.debug)("nbd_option_answered", peer=conn.peer,
                                                          option=header.option, note=answer.note)
            conn.writer.write(answer.reply)
            await conn.writer.drain()
            if answer.close:
                return None
            if answer.export is not None:
                return answer.export
        raise wn.NbdProtocolError(f"no export chosen after {MAX_OPTIONS} options")

    async def _transmit(self, conn: _Conn, index: int) -> None:
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
                if not await self._request(conn, index, req):
                    return
            finally:
                conn.busy = False

    async def _request(self, conn: _Conn, index: int, req: wn.Request) -> bool:
        """Serve one request; False to close the connection."""
        conn.requests += 1
        self.stats.requests += 1
        disk = self.disks[index]
        verdict = wn.check_request(req, disk.size_bytes, self.max_payload)
        if verdict.error:
            self.stats.refused += 1
            log.warning("nbd_request_refused", peer=conn.peer, export=disk.name, cmd=req.cmd, offset=req.offset,
                        length=req.length, error=verdict.error.name, reason=verdict.reason, close=verdict.close)
            await _skip(conn.reader, verdict.skip)
            await self._reply(conn, req.handle, verdict.error)
            return not verdict.close
        cmd = wn.Cmd(req.cmd)
        if cmd is wn.Cmd.DISC:
            log.info("nbd_client_disc", peer=conn.peer, export=disk.name)
            return False
        data = await conn.reader.readexactly(req.length) if cmd is wn.Cmd.WRITE else b""
        try:
            payload = await self._run(conn, index, cmd, req, data)
        except (DiskBoundsError, WnumError, WritesStopped, OSError, errors.DrlabError) as exc:
            self.stats.refused += 1
            err = wn.Errno.EINVAL if isinstance(exc, DiskBoundsError) else wn.Errno.EIO
            log.error("nbd_request_failed", peer=conn.peer, export=disk.name, cmd=cmd.name, offset=req.offset,
                      length=req.length, error=str(exc))
            await self._reply(conn, req.handle, err)
            return True
        await self._reply(conn, req.handle, wn.Errno.OK, payload)
        return True

    async def _run(self, conn: _Conn, index: int, cmd: wn.Cmd, req: wn.Request, data: bytes) -> bytes:
        disk = self.disks[index]
        if cmd is wn.Cmd.READ:
            out = disk.pread(req.offset, req.length)
            self.stats.bytes_read += len(out)
            return out
        if cmd is wn.Cmd.FLUSH:
            await self._fsync(disk)
            return b""
        async with self._write_lock:
            if cmd is wn.Cmd.WRITE:
                await self._write(conn, index, req.offset, data)
            else:  # TRIM, WRITE_ZEROES: the range reads as zeros afterwards, on the replica too
                for offset, length in wn.zero_pieces(req.offset, req.length, len(self._zeros)):
                    await self._write(conn, index, offset, self._zeros if length == len(self._zeros) else bytes(length))
                    await asyncio.sleep(0)  # let the batch clock cut between pieces
        if req.fua:
            await self._fsync(disk)
        return b""

    async def _write(self, conn: _Conn, index: int, offset: int, data: bytes) -> None:
        if not data:
            return
        wnum = await self._write_next(index, offset, data)
        conn.writes += 1
        conn.last_wnum = wnum
        self.stats.writes += 1
        self.stats.bytes_written += len(data)
        self.stats.last_wnum = max(self.stats.last_wnum, wnum)

    async def _fsync(self, disk: DiskImage) -> None:
        await asyncio.to_thread(disk.fsync)
        self.stats.flushes += 1

    async def _reply(self, conn: _Conn, handle: int, error: int, payload: bytes = b"") -> None:
        conn.writer.write(wn.encode_simple_reply(handle, error))
        if payload:
            conn.writer.write(payload)
        await conn.writer.drain()


async def _skip(reader: asyncio.StreamReader, nbytes: int, piece: int = 1 << 20) -> None:
    """Read and drop ``nbytes`` (an oversized or refused WRITE's payload), a piece at a time."""
    while nbytes > 0:
        got = await reader.readexactly(min(piece, nbytes))
        nbytes -= len(got)
