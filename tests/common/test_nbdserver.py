"""The generic NBD server (common/nbdserver.py) over in-memory exports, driven by the asyncio
client (common/nbdclient.py): exports looked up at negotiation (added and removed while serving),
an export's own errors as errnos, the write lock around whole commands; and the client's URL
parsing, splitting, refusals and broken connections. The agent's export over real disks is
tests/agent/test_nbd_server.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from common import errors
from common.nbdclient import NbdBlockClient, NbdClient, NbdError, parse_url
from common.nbdserver import ExportError, NbdServer
from common.wire import nbd as wn

pytestmark = pytest.mark.timeout(30)
SIZE = 1 << 20
MAX_PAYLOAD = 64 << 10


class MemExport:
    def __init__(self, name: str, size: int = SIZE) -> None:
        self.name, self.size_bytes = name, size
        self.data = bytearray(size)
        self.write_lock = asyncio.Lock()
        self.writes: list[tuple[int, int]] = []
        self.flushes = 0
        self.fail: ExportError | OSError | None = None

    async def read(self, offset: int, length: int) -> bytes:
        if self.fail:
            raise self.fail
        return bytes(self.data[offset:offset + length])

    async def write(self, offset: int, data: bytes) -> int:
        if self.fail:
            raise self.fail
        await asyncio.sleep(0)  # another command could run here if the lock did not hold it off
        self.data[offset:offset + len(data)] = data
        self.writes.append((offset, len(data)))
        return len(self.writes)

    async def flush(self) -> None:
        self.flushes += 1


class MemExports:
    def __init__(self) -> None:
        self.by_name: dict[str, MemExport] = {}

    def names(self) -> list[str]:
        return list(self.by_name)

    def get(self, name: str) -> MemExport | None:
        return self.by_name.get(name)


@pytest.fixture
async def served() -> AsyncIterator[tuple[NbdServer, MemExports]]:
    exports = MemExports()
    exports.by_name["a"] = MemExport("a")
    server = NbdServer(exports, port=0, max_payload=MAX_PAYLOAD, zero_chunk=16 << 10)
    await server.start()
    yield server, exports
    await server.stop()


def url(server: NbdServer, name: str) -> str:
    return f"nbd://127.0.0.1:{server.port}/{name}"


async def test_client_reads_writes_and_flushes_splitting_what_is_over_the_maximum(served, seed: int) -> None:
    server, exports = served
    blob = random.Random(seed).randbytes(3 * MAX_PAYLOAD + 17)
    async with NbdClient.from_url(url(server, "a")) as nbd:
        assert (nbd.size_bytes, nbd.max_payload, nbd.flags) == (SIZE, MAX_PAYLOAD, wn.SERVED_FLAGS)
        await nbd.write(1000, blob, fua=True)
        assert exports.by_name["a"].writes == [(1000 + i * MAX_PAYLOAD, min(MAX_PAYLOAD, len(blob) - i * MAX_PAYLOAD))
                                               for i in range(4)]
        assert exports.by_name["a"].flushes == 4  # FUA: each piece
        assert await nbd.read(1000, len(blob)) == blob
        await nbd.write_zeroes(1000, 40 << 10)  # 16 KiB pieces
        assert exports.by_name["a"].writes[-3:] == [(1000, 16 << 10), (1000 + (16 << 10), 16 << 10),
                                                     (1000 + (32 << 10), 8 << 10)]
        await nbd.flush()
        assert await nbd.read(1000, 40 << 10) == bytes(40 << 10)
        with pytest.raises(errors.BadRequest):
            await nbd.read(SIZE - 1, 2)  # refused before anything is sent
    assert server.stats.last_wnum == 7 and server.stats.refused == 0


async def test_exports_are_looked_up_at_negotiation(served) -> None:
    server, exports = served
    with pytest.raises(NbdError, match="export refused"):
        await NbdClient.from_url(url(server, "b")).connect()
    exports.by_name["b"] = MemExport("b", 8192)
    async with NbdClient.from_url(url(server, "b")) as nbd:
        assert nbd.size_bytes == 8192
        await nbd.write(0, b"bee")
        del exports.by_name["b"]  # gone from the list; the open connection is the export's business
        assert await nbd.read(0, 3) == b"bee"
    assert exports.by_name["a"].data[:3] == bytes(3)


async def test_an_exports_own_errors_become_errnos_and_keep_the_connection(served) -> None:
    server, exports = served
    export = exports.by_name["a"]
    async with NbdClient.from_url(url(server, "a")) as nbd:
        export.fail = ExportError(wn.Errno.ENOSPC, "full")
        with pytest.raises(NbdError) as exc:
            await nbd.write(0, b"x")
        assert exc.value.errno == wn.Errno.ENOSPC and not exc.value.retriable
        export.fail = OSError(5, "gone")
        with pytest.raises(NbdError) as exc:
            await nbd.read(0, 1)
        assert exc.value.errno == wn.Errno.EIO
        export.fail = None
        await nbd.write(0, b"ok")
        assert await nbd.read(0, 2) == b"ok"
    assert server.stats.refused == 2


async def test_write_commands_of_one_lock_never_interleave(served) -> None:
    server, exports = served
    clients = [NbdClient.from_url(url(server, "a")) for _ in range(3)]
    for c in clients:
        await c.connect()
    await asyncio.gather(clients[0].write_zeroes(0, 256 << 10), clients[1].write(0, b"\x01" * (64 << 10)),
                         clients[2].write_zeroes(0, 128 << 10))
    pieces = exports.by_name["a"].writes  # every command starts at 0: a 0 starts the next command
    starts = [i for i, (off, _) in enumerate(pieces) if off == 0]
    groups = [pieces[a:b] for a, b in zip(starts, [*starts[1:], len(pieces)], strict=True)]
    assert sorted(len(g) for g in groups) == [1, 8, 16]  # 64 KiB write; 128 and 256 KiB in 16 KiB pieces
    for group in groups:  # each command's pieces in a row, in order
        assert [off for off, _ in group] == [i * (16 << 10) for i in range(len(group))] or len(group) == 1
    for c in clients:
        await c.close()


async def test_a_broken_connection_is_a_retriable_transport_error(served) -> None:
    server, _ = served
    nbd = NbdClient.from_url(url(server, "a"), timeout_s=5)
    await nbd.connect()
    await server.stop()
    with pytest.raises(errors.TransportError) as exc:
        await nbd.write(0, b"maybe")
    assert exc.value.retriable
    with pytest.raises(errors.TransportError):
        await NbdClient.from_url(url(server, "a"), timeout_s=2).connect()


async def test_block_client_shape_is_one_disk(served) -> None:
    server, exports = served
    async with NbdBlockClient(url(server, "a"), 2) as client:
        assert await client.info() == [{"index": 2, "size_bytes": SIZE}]
        await client.write(2, 7, 4096, b"seven")
        assert await client.read(2, 4096, 5) == b"seven"
        with pytest.raises(errors.BadRequest):
            await client.write(0, 8, 0, b"other disk")
        await client.flush(2)
    assert exports.by_name["a"].data[4096:4101] == b"seven"


@pytest.mark.parametrize("text,expected", [("nbd://127.0.0.1:10810/fo-1", ("127.0.0.1", 10810, "fo-1")),
                                           ("nbd://localhost/x%20y", ("localhost", 10809, "x y")),
                                           ("nbd://[::1]:99/", ("::1", 99, ""))])
def test_parse_url(text: str, expected: tuple[str, int, str]) -> None:
    u = parse_url(text)
    assert (u.host, u.port, u.name) == expected


@pytest.mark.parametrize("text", ["http://127.0.0.1/x", "nbd:///x", "nbd://h:notaport/x", "127.0.0.1:10809"])
def test_parse_url_refuses_what_is_not_an_nbd_url(text: str) -> None:
    with pytest.raises(errors.BadRequest):
        parse_url(text)


def test_the_server_listens_on_loopback_only() -> None:
    with pytest.raises(errors.ConfigError, match="loopback"):
        NbdServer(MemExports(), host="0.0.0.0")
