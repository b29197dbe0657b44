"""Block server over a real Unix socket: writes, reads, refusals, order."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentfakes import BlockClient

from agent.blockserver import BlockServer
from agent.disk import DiskImage
from agent.replication import Replicator
from common.config import AgentConfig, DiskConfig
from common.wire import blockio as bio

SIZE = 1 << 20


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Replicator, BlockServer, BlockClient]]:
    cfg = AgentConfig(data_dir=tmp_path, socket_path=tmp_path / "a.sock", backlog_max_bytes=SIZE,
                      disks=[DiskConfig("d0", tmp_path / "d0.img", SIZE), DiskConfig("d1", tmp_path / "d1.img", SIZE)])
    disks = [DiskImage(d.path, d.size_bytes, d.name) for d in cfg.disks]
    rep = Replicator(cfg, disks, ssl.create_default_context())
    server = BlockServer(cfg.socket_path, disks, rep.write)
    await server.start()
    client = await BlockClient.connect(cfg.socket_path)
    try:
        yield rep, server, client
    finally:
        await client.close()
        await server.stop()
        await rep.stop()
        for d in disks:
            d.close()


async def test_write_then_read_back(served: tuple[Replicator, BlockServer, BlockClient]) -> None:
    _rep, _server, client = served
    resp, _ = await client.write(1, 1, 4096, b"abc")
    assert resp.status == bio.Status.OK and resp.wnum == 1
    resp, data = await client.read(1, 4095, 5)
    assert resp.status == bio.Status.OK and data == b"\0abc\0"
    resp, data = await client.read(0, 4096, 3)
    assert data == bytes(3)  # the other disk is untouched


async def test_out_of_bounds_write_is_refused_and_changes_nothing(
        served: tuple[Replicator, BlockServer, BlockClient]) -> None:
    rep, _server, client = served
    resp, msg = await client.write(0, 1, SIZE - 2, b"xyz")
    assert resp.status == bio.Status.ERROR and b"outside" in msg
    assert rep.tracker.last_wnum == 0  # the write number was not consumed
    _, data = await client.read(0, SIZE - 2, 2)
    assert data == b"\0\0"
    resp, _ = await client.write(0, 1, 0, b"ok")
    assert resp.status == bio.Status.OK


async def test_non_increasing_wnum_is_refused_across_disks(
        served: tuple[Replicator, BlockServer, BlockClient]) -> None:
    _rep, _server, client = served
    assert (await client.write(0, 5, 0, b"a"))[0].status == bio.Status.OK
    for disk, wnum in [(1, 5), (0, 4), (1, 1)]:
        resp, msg = await client.write(disk, wnum, 10, b"b")
        assert resp.status == bio.Status.ERROR and b"not above" in msg
    assert (await client.read(1, 10, 1))[1] == b"\0"
    assert (await client.write(1, 6, 10, b"c"))[0].status == bio.Status.OK


async def test_bad_index_info_and_flush(served: tuple[Replicator, BlockServer, BlockClient]) -> None:
    _rep, _server, client = served
    resp, msg = await client.read(7, 0, 1)
    assert resp.status == bio.Status.ERROR and b"index 7" in msg
    resp, payload = await client.call(bio.encode_request(bio.Op.INFO))
    assert bio.parse_info(payload) == [{"index": 0, "name": "d0", "size_bytes": SIZE},
                                       {"index": 1, "name": "d1", "size_bytes": SIZE}]
    resp, _ = await client.call(bio.encode_request(bio.Op.FLUSH, 0))
    assert resp.status == bio.Status.OK


async def test_pipelined_requests_are_answered_in_order(served: tuple[Replicator, BlockServer, BlockClient]) -> None:
    _rep, _server, client = served
    raw = b"".join(bio.encode_request(bio.Op.WRITE, 0, wnum=w, offset=0, data=bytes([w])) for w in range(1, 51))
    client.writer.write(raw + bio.encode_request(bio.Op.READ, 0, offset=0, length=1))
    await client.writer.drain()
    wnums = []
    for _ in range(50):
        resp = bio.decode_response(await client.reader.readexactly(bio.RESPONSE_SIZE))
        wnums.append(resp.wnum)
    resp = bio.decode_response(await client.reader.readexactly(bio.RESPONSE_SIZE))
    assert wnums == list(range(1, 51))
    assert await client.reader.readexactly(resp.length) == bytes([50])


async def test_protocol_violation_closes_the_connection(served: tuple[Replicator, BlockServer, BlockClient],
                                                        tmp_path: Path) -> None:
    _rep, server, client = served
    client.writer.write(b"JUNK" + bytes(24))
    await client.writer.drain()
    assert await asyncio.wait_for(client.reader.read(), 5) == b""
    other = await BlockClient.connect(server.socket_path)  # the server itself keeps serving
    assert (await other.write(0, 1, 0, b"x"))[0].status == bio.Status.OK
    await other.close()


async def test_largest_write_and_read(tmp_path: Path) -> None:
    size = 2 * bio.MAX_LENGTH
    cfg = AgentConfig(data_dir=tmp_path, socket_path=tmp_path / "big.sock",
                      disks=[DiskConfig("big", tmp_path / "big.img", size)])
    disks = [DiskImage(d.path, d.size_bytes, d.name) for d in cfg.disks]
    rep = Replicator(cfg, disks, ssl.create_default_context())
    server = BlockServer(cfg.socket_path, disks, rep.write)
    await server.start()
    client = await BlockClient.connect(cfg.socket_path)
    try:
        data = bytes(range(256)) * (bio.MAX_LENGTH // 256)
        assert (await client.write(0, 1, 12345, data))[0].status == bio.Status.OK
        resp, back = await client.read(0, 12345, bio.MAX_LENGTH)
        assert resp.status == bio.Status.OK and back == data
    finally:
        await client.close()
        await server.stop()
        await rep.stop()
        disks[0].close()
