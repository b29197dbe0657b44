"""The agent's NBD export in-process, on loopback port 0, driven by a small client written here:
negotiation, every command, FUA, errors, framing violations, concurrency and stop. Writes go
through a real Replicator (no pipeline: the tracker watches the disk) so what is tracked is
checked too."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.disk import DiskImage
from agent.nbd import NbdServer
from agent.replication import Replicator
from common.config import AgentConfig, load
from common.errors import ConfigError
from common.wire import nbd as wn

SIZE = 4 << 20
ZERO_CHUNK = 64 << 10
MAX_PAYLOAD = 256 << 10

pytestmark = pytest.mark.timeout(30)


class NbdClient:
    """Just enough of an NBD client for tests (fixed newstyle, simple replies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.handle = 0

    @classmethod
    async def connect(cls, port: int, client_flags: int = 3) -> NbdClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        magic, opt_magic, flags = wn.GREETING.unpack(await reader.readexactly(wn.GREETING.size))
        assert (magic, opt_magic) == (wn.NBDMAGIC, wn.IHAVEOPT)
        assert flags == wn.HandshakeFlag.FIXED_NEWSTYLE | wn.HandshakeFlag.NO_ZEROES
        writer.write(wn.CLIENT_FLAGS.pack(client_flags))
        return client

    async def option(self, opt: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send an option; the replies up to and including ACK or an error."""
        self.writer.write(wn.encode_option(opt, data))
        replies: list[tuple[int, bytes]] = []
        while True:
            option, rep, length = wn.decode_option_reply(await self.reader.readexactly(wn.OPTION_REPLY.size))
            assert option == opt
            replies.append((rep, await self.reader.readexactly(length)))
            if rep == wn.Rep.ACK or rep & (1 << 31):
                return replies

    async def go(self, name: str) -> tuple[int, int]:
        replies = await self.option(wn.Opt.GO, wn.encode_info_request(name, (wn.Info.BLOCK_SIZE,)))
        assert replies[-1][0] == wn.Rep.ACK, replies
        export = next(d for r, d in replies if r == wn.Rep.INFO and wn.U16.unpack(d[:2])[0] == wn.Info.EXPORT)
        _, size, flags = wn.INFO_EXPORT.unpack(export)
        return size, flags

    async def request(self, cmd: int, offset: int = 0, length: int = 0, flags: int = 0,
                      data: bytes = b"") -> tuple[int, bytes]:
        self.handle += 1
        self.writer.write(wn.encode_request(cmd, self.handle, offset, length, flags, data))
        error, handle = wn.decode_simple_reply(await self.reader.readexactly(wn.SIMPLE_REPLY.size))
        assert handle == self.handle
        payload = await self.reader.readexactly(length) if cmd == wn.Cmd.READ and error == 0 else b""
        return error, payload

    async def closed_by_server(self, timeout_s: float = 5.0) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout_s) == b""
        except ConnectionError:
            return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[NbdServer, Replicator, list[DiskImage]]]:
    disks = [DiskImage(tmp_path / "a.img", SIZE, "disk0"), DiskImage(tmp_path / "b.img", SIZE // 2, "data")]
    rep = Replicator(AgentConfig(), disks, ssl.create_default_context())
    for i, d in enumerate(disks):
        rep.tracker.watch(i, d.size_bytes)
    server = NbdServer(disks, rep.write_next, port=0, max_payload=MAX_PAYLOAD, zero_chunk=ZERO_CHUNK)
    await server.start()
    yield server, rep, disks
    await server.stop()
    for d in disks:
        d.close()


async def opened(server: NbdServer, name: str = "disk0") -> NbdClient:
    client = await NbdClient.connect(server.port)
    await client.go(name)
    return client


def tracked(rep: Replicator, index: int) -> list[tuple[int, bytes]]:
    cut = rep.tracker.cut(index, time.time_ns())
    return [(r.offset, bytes(r.data)) for r in cut.records] if cut else []


# ------------------------------------------------------------------ negotiation


async def test_negotiation_lists_informs_and_refuses_what_it_does_not_serve(env) -> None:
    server, _, disks = env
    client = await NbdClient.connect(server.port)
    listed = await client.option(wn.Opt.LIST)
    assert [wn.Rep(r) for r, _ in listed] == [wn.Rep.SERVER, wn.Rep.SERVER, wn.Rep.ACK]
    assert [d[4:].decode() for r, d in listed[:2]] == ["disk0", "data"]
    assert (await client.option(wn.Opt.STRUCTURED_REPLY))[0][0] == wn.Rep.ERR_UNSUP
    assert (await client.option(42, b"xyz"))[0][0] == wn.Rep.ERR_UNSUP
    assert (await client.option(wn.Opt.STARTTLS))[0][0] == wn.Rep.ERR_UNSUP
    unknown = await client.option(wn.Opt.INFO, wn.encode_info_request("nope"))
    assert unknown[0][0] == wn.Rep.ERR_UNKNOWN and b"nope" in unknown[0][1]
    assert (await client.option(wn.Opt.INFO, b"\0\0"))[0][0] == wn.Rep.ERR_INVALID
    assert (await client.option(wn.Opt.LIST, b"x"))[0][0] == wn.Rep.ERR_INVALID
    info = await client.option(wn.Opt.INFO, wn.encode_info_request("data", (wn.Info.NAME,)))
    kinds = {wn.U16.unpack(d[:2])[0]: d[2:] for r, d in info if r == wn.Rep.INFO}
    assert wn.INFO_EXPORT.unpack(wn.U16.pack(0) + kinds[wn.Info.EXPORT])[1] == disks[1].size_bytes
    assert wn.INFO_BLOCK_SIZE.unpack(wn.U16.pack(3) + kinds[wn.Info.BLOCK_SIZE])[1:] == (1, 4096, MAX_PAYLOAD)
    assert kinds[wn.Info.NAME] == b"data"
    size, flags = await client.go("disk0")  # still usable after every refusal
    assert size == SIZE and flags == wn.SERVED_FLAGS
    assert await client.request(wn.Cmd.READ, 0, 16) == (0, bytes(16))
    await client.close()


@pytest.mark.parametrize("client_flags,padding", [(1, 124), (3, 0)])
async def test_export_name_replies_with_or_without_zeroes(env, client_flags: int, padding: int) -> None:
    server, _, _ = env
    client = await NbdClient.connect(server.port, client_flags)
    client.writer.write(wn.encode_option(wn.Opt.EXPORT_NAME, b"data"))
    size, flags = wn.EXPORT_NAME_REPLY.unpack(await client.reader.readexactly(wn.EXPORT_NAME_REPLY.size))
    assert (size, flags) == (SIZE // 2, wn.SERVED_FLAGS)
    assert await client.reader.readexactly(padding) == bytes(padding)
    assert await client.request(wn.Cmd.WRITE, 0, data=b"hello") == (0, b"")
    assert await client.request(wn.Cmd.READ, 0, 5) == (0, b"hello")
    await client.close()


async def test_unknown_export_name_hangs_up(env) -> None:
    server, _, _ = env
    client = await NbdClient.connect(server.port)
    client.writer.write(wn.encode_option(wn.Opt.EXPORT_NAME, b"nope"))
    assert await client.closed_by_server()


async def test_abort_is_acknowledged_then_closed(env) -> None:
    server, _, _ = env
    client = await NbdClient.connect(server.port)
    assert (await client.option(wn.Opt.ABORT))[0][0] == wn.Rep.ACK
    assert await client.closed_by_server()


@pytest.mark.parametrize("hostile", ["client_flags", "option_magic", "option_too_long"])
async def test_negotiation_violations_close_the_connection(env, hostile: str) -> None:
    server, _, _ = env
    client = await NbdClient.connect(server.port, client_flags=0x10 if hostile == "client_flags" else 3)
    if hostile == "option_magic":
        client.writer.write(wn.OPTION.pack(0x1234, wn.Opt.LIST, 0))
    elif hostile == "option_too_long":
        client.writer.write(wn.OPTION.pack(wn.IHAVEOPT, wn.Opt.GO, 1 << 30))
        _, rep, _ = wn.decode_option_reply(await client.reader.readexactly(wn.OPTION_REPLY.size))
        assert rep == wn.Rep.ERR_TOO_BIG
        await client.reader.readexactly(len(b"option too long"))
    assert await client.closed_by_server()
    assert server.stats.protocol_errors == 1


async def test_handshake_must_finish_in_time(tmp_path: Path) -> None:
    disk = DiskImage(tmp_path / "a.img", SIZE, "disk0")
    server = NbdServer([disk], _never_write, port=0, handshake_timeout_s=0.3)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await reader.readexactly(wn.GREETING.size)  # then say nothing
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(1), 5) == b""
        assert time.monotonic() - started < 2
        writer.close()
    finally:
        await server.stop()
        disk.close()


async def _never_write(index: int, offset: int, data: bytes) -> int:
    raise AssertionError("no write expected")


# ------------------------------------------------------------------ commands


async def test_write_read_flush_fua_trim_zeroes_are_tracked_in_order(env, seed: int) -> None:
    server, rep, disks = env
    rng = random.Random(seed)
    client = await opened(server)
    blob = rng.randbytes(250_000)
    assert await client.request(wn.Cmd.WRITE, 1000, data=blob) == (0, b"")
    assert await client.request(wn.Cmd.READ, 1000, len(blob)) == (0, blob)
    assert disks[0].pread(1000, len(blob)) == blob
    flushes = server.stats.flushes
    assert await client.request(wn.Cmd.FLUSH) == (0, b"")
    assert await client.request(wn.Cmd.WRITE, 0, flags=wn.CmdFlag.FUA, data=b"\x01" * 512) == (0, b"")
    assert server.stats.flushes == flushes + 2  # FLUSH, then the FUA write
    assert await client.request(wn.Cmd.TRIM, 2000, 3000) == (0, b"")
    span = 3 * ZERO_CHUNK + 5  # several pieces
    assert await client.request(wn.Cmd.WRITE_ZEROES, 50_000, span, flags=wn.CmdFlag.NO_HOLE) == (0, b"")
    assert disks[0].pread(2000, 3000) == bytes(3000)
    assert disks[0].pread(50_000, span) == bytes(span)
    assert disks[0].pread(50_000 + span, 1000) == blob[50_000 + span - 1000:][:1000]
    records = tracked(rep, 0)
    assert records[:3] == [(1000, blob), (0, b"\x01" * 512), (2000, bytes(3000))]
    assert [(o, len(d)) for o, d in records[3:]] == [(50_000, ZERO_CHUNK), (50_000 + ZERO_CHUNK, ZERO_CHUNK),
                                                    (50_000 + 2 * ZERO_CHUNK, ZERO_CHUNK), (50_000 + 3 * ZERO_CHUNK, 5)]
    assert rep.tracker.last_wnum == server.stats.last_wnum == 7
    assert await client.request(wn.Cmd.TRIM, 0, 0, flags=wn.CmdFlag.FUA) == (0, b"")  # empty: no write
    assert rep.tracker.last_wnum == 7
    client.writer.write(wn.encode_request(wn.Cmd.DISC, 99))
    assert await client.closed_by_server()


async def test_each_export_writes_its_own_disk(env) -> None:
    server, rep, disks = env
    client = await opened(server, "data")
    assert await client.request(wn.Cmd.WRITE, 10, data=b"second") == (0, b"")
    assert disks[1].pread(10, 6) == b"second" and disks[0].pread(10, 6) == bytes(6)
    assert tracked(rep, 1) == [(10, b"second")] and tracked(rep, 0) == []
    await client.close()


# ------------------------------------------------------------------ refusals


async def test_refused_requests_change_nothing_and_keep_the_connection(env) -> None:
    server, rep, disks = env
    client = await opened(server)
    before = disks[0].pread(0, SIZE)
    assert (await client.request(wn.Cmd.READ, SIZE - 10, 11))[0] == wn.Errno.EINVAL
    assert (await client.request(wn.Cmd.WRITE, SIZE - 10, data=b"x" * 11))[0] == wn.Errno.ENOSPC
    assert (await client.request(wn.Cmd.WRITE_ZEROES, SIZE, 1))[0] == wn.Errno.ENOSPC
    assert (await client.request(wn.Cmd.TRIM, SIZE + 1, 0))[0] == wn.Errno.EINVAL
    assert (await client.request(7, 0, 512))[0] == wn.Errno.EINVAL  # BLOCK_STATUS: not negotiated
    assert (await client.request(wn.Cmd.READ, 0, 1, flags=1 << 4))[0] == wn.Errno.EINVAL
    over = MAX_PAYLOAD + 1  # oversized, small enough to skip: the payload is read and dropped
    assert (await client.request(wn.Cmd.WRITE, 0, data=b"y" * over))[0] == wn.Errno.EINVAL
    assert (await client.request(wn.Cmd.READ, 0, over))[0] == wn.Errno.EINVAL
    assert disks[0].pread(0, SIZE) == before
    assert rep.tracker.last_wnum == 0 and server.stats.refused == 8
    assert await client.request(wn.Cmd.WRITE, 0, data=b"ok") == (0, b"")  # the framing survived
    await client.close()


async def test_oversized_write_that_cannot_be_skipped_is_answered_then_closed(env) -> None:
    server, rep, _ = env
    client = await opened(server)
    client.writer.write(wn.REQUEST.pack(wn.REQUEST_MAGIC, 0, wn.Cmd.WRITE, 5, 0, wn.SKIP_MAX_BYTES + 1))
    error, handle = wn.decode_simple_reply(await client.reader.readexactly(wn.SIMPLE_REPLY.size))
    assert (error, handle) == (wn.Errno.EINVAL, 5)
    assert await client.closed_by_server()
    assert rep.tracker.last_wnum == 0


async def test_bad_request_magic_closes_the_connection(env) -> None:
    server, _, _ = env
    client = await opened(server)
    client.writer.write(wn.REQUEST.pack(0xDEADBEEF, 0, wn.Cmd.READ, 1, 0, 512))
    assert await client.closed_by_server()
    assert server.stats.protocol_errors == 1


async def test_a_failing_write_is_eio(tmp_path: Path) -> None:
    disk = DiskImage(tmp_path / "a.img", SIZE, "disk0")

    async def failing(index: int, offset: int, data: bytes) -> int:
        raise OSError(5, "disk on fire")

    server = NbdServer([disk], failing, port=0)
    await server.start()
    try:
        client = await opened(server)
        assert (await client.request(wn.Cmd.WRITE, 0, data=b"abc"))[0] == wn.Errno.EIO
        assert (await client.request(wn.Cmd.WRITE_ZEROES, 0, 10))[0] == wn.Errno.EIO
        assert await client.request(wn.Cmd.READ, 0, 3) == (0, bytes(3))  # still served
        await client.close()
    finally:
        await server.stop()
        disk.close()


# ------------------------------------------------------------------ concurrency and stop


async def test_writes_of_many_connections_get_increasing_write_numbers(env, seed: int) -> None:
    server, rep, disks = env
    rng = random.Random(seed)
    clients = [await opened(server, name) for name in ("disk0", "disk0", "data")]
    expected: dict[tuple[int, int], bytes] = {}

    async def run(k: int, client: NbdClient) -> None:
        index = 1 if k == 2 else 0
        for i in range(40):
            offset = (k * 40 + i) * 4096
            data = rng.randbytes(rng.randrange(1, 4096))
            cmd = wn.Cmd.WRITE if i % 5 else wn.Cmd.WRITE_ZEROES
            if cmd is wn.Cmd.WRITE:
                assert await client.request(cmd, offset, data=data) == (0, b"")
            else:
                assert await client.request(cmd, offset, len(data)) == (0, b"")
                data = bytes(len(data))
            expected[(index, offset)] = data

    await asyncio.gather(*(run(k, c) for k, c in enumerate(clients)))
    assert rep.tracker.last_wnum == server.stats.last_wnum == 120  # the tracker refuses any non-increasing one
    for (index, offset), data in expected.items():
        assert disks[index].pread(offset, len(data)) == data
    for c in clients:
        await c.close()


async def test_stop_lets_the_request_in_progress_finish(tmp_path: Path) -> None:
    disk = DiskImage(tmp_path / "a.img", SIZE, "disk0")
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(index: int, offset: int, data: bytes) -> int:
        entered.set()
        await release.wait()
        disk.pwrite(offset, data)
        return 1

    server = NbdServer([disk], slow, port=0)
    await server.start()
    busy, idle = await opened(server), await opened(server)
    pending = asyncio.create_task(busy.request(wn.Cmd.WRITE, 0, data=b"last"))
    await entered.wait()
    stopping = asyncio.create_task(server.stop())
    assert await idle.closed_by_server()  # an idle connection goes at once
    assert not stopping.done()
    release.set()
    assert await pending == (0, b"")  # the write in progress was answered
    await stopping
    assert await busy.closed_by_server()
    assert disk.pread(0, 4) == b"last"
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)
    disk.close()


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.com", "::"])
def test_nbd_listens_on_loopback_only(host: str) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        AgentConfig(nbd_listen_host=host)
    with pytest.raises(ConfigError, match="loopback"):
        load(AgentConfig, None, [f"nbd_listen_host={host}"])
    with pytest.raises(ConfigError, match="loopback"):
        NbdServer([], _never_write, host=host)


def test_nbd_config_defaults_off_and_takes_loopback_overrides() -> None:
    assert AgentConfig().nbd_enabled is False
    cfg = load(AgentConfig, None, ["nbd_enabled=true", "nbd_listen_host=127.0.1.9", "nbd_port=10810"])
    assert (cfg.nbd_enabled, cfg.nbd_listen_host, cfg.nbd_port) == (True, "127.0.1.9", 10810)
    assert AgentConfig(nbd_listen_host="::1").nbd_listen_host == "::1"
    with pytest.raises(ConfigError):
        AgentConfig(nbd_max_request_bytes=64 << 20)
