"""Block hashes of the replica: the pure rules (mt/hashes.py) and the MT data route
``GET /v1/disks/{disk}/hashes`` over real TLS (auth, bad parameters, not_ready, stale)."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import xxhash
from mtbatches import DISK_SIZE, BatchMaker
from mtfakecs import FakeCS

from common import errors, tls
from common.config import MTConfig
from common.wire.seal import Sealer
from mt import hashes
from mt.service import MTService

DISK = "ab" * 16
MT_ID, PS_ID, OTHER_PS, ADMIN_ID, AGENT_ID = "11" * 16, "22" * 16, "33" * 16, "44" * 16, "66" * 16
KEY = os.urandom(32)
BLOCK = 64 << 10


def issue(ca: tuple[bytes, bytes], directory: Path, cid: str, role: str, meta: dict[str, Any]) -> tls.IdentityFiles:
    files = tls.IdentityFiles(directory)
    tls.issue_local(*ca, files, component_id=cid, role=role, hosts=["127.0.0.1"], meta=meta)
    return files


async def wait_until(pred: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------- pure


def test_pieces_cover_the_range_with_a_short_last_block() -> None:
    assert hashes.pieces(4096, 10_000, 4096) == [(4096, 4096), (8192, 4096), (12288, 1808)]
    assert hashes.pieces(0, 4096, 4096) == [(0, 4096)]
    assert hashes.blocks_in(10_000, 4096) == 3


def test_hash_range_is_xxh3_128_of_each_piece() -> None:
    image = os.urandom(3 * 4096 + 100)
    got = hashes.hash_range(lambda off, n: image[off:off + n], 100, len(image) - 100, 4096)
    want = [xxhash.xxh3_128_hexdigest(image[off:off + n]) for off, n in hashes.pieces(100, len(image) - 100, 4096)]
    assert got == want and len(got) == 3 and all(len(h) == 32 for h in got)


def test_parse_query_caps_to_whole_blocks() -> None:
    q = hashes.parse_query({"generation": "3", "offset": "0", "length": str(1 << 20), "block": "4096"}, 1 << 20,
                           max_bytes=10_000)
    assert (q.generation, q.offset, q.length, q.block, q.count) == (3, 0, 8192, 4096, 2)
    q = hashes.parse_query({"generation": "1", "offset": "4096", "length": "5000", "block": "4096"}, 1 << 20,
                           max_bytes=1 << 20)
    assert (q.length, q.count) == (5000, 2)  # under the cap: as asked, last block short
    q = hashes.parse_query({"generation": "1", "offset": "0", "length": str(1 << 20), "block": str(1 << 20)},
                           1 << 20, max_bytes=4096)
    assert q.length == 1 << 20  # at least one block


@pytest.mark.parametrize("query", [
    {"offset": "0", "length": "1", "block": "4096"},  # no generation
    {"generation": "0", "offset": "0", "length": "1", "block": "4096"},
    {"generation": "x", "offset": "0", "length": "1", "block": "4096"},
    {"generation": "1", "offset": "-1", "length": "1", "block": "4096"},
    {"generation": "1", "offset": "0", "length": "0", "block": "4096"},
    {"generation": "1", "offset": "0", "length": "1", "block": "5000"},  # not a power of two
    {"generation": "1", "offset": "0", "length": "1", "block": "2048"},  # too small
    {"generation": "1", "offset": "0", "length": "1", "block": str(128 << 20)},  # too large
    {"generation": "1", "offset": str(1 << 20), "length": "1", "block": "4096"},  # past the end
    {"generation": "1", "offset": "4096", "length": str(1 << 20), "block": "4096"},  # runs past the end
    {"generation": "1", "offset": "0", "length": "1", "block": "4096", "extra": "1"},
    {"generation": "1" * 30, "offset": "0", "length": "1", "block": "4096"},
    {"generation": "١", "offset": "0", "length": "1", "block": "4096"},  # a non-ASCII digit
])
def test_parse_query_refuses_bad_parameters(query: dict[str, str]) -> None:
    with pytest.raises(errors.BadRequest):
        hashes.parse_query(query, 1 << 20, max_bytes=64 << 20)


# ---------------------------------------------------------------------------- the route


@dataclass
class World:
    cs: FakeCS
    mt: MTService
    cfg: MTConfig
    ctx: dict[str, ssl.SSLContext]
    maker: BatchMaker
    sealer: Sealer

    def document(self, gen: int = 1) -> dict[str, Any]:
        return {"disks": [{"disk_id": DISK, "ps_id": PS_ID, "generation": gen, "size_bytes": DISK_SIZE,
                           "key_epoch": 1, "key_b64": base64.b64encode(KEY).decode()}], "jobs": []}

    async def hashes(self, who: str = "ps", disk: str = DISK, **params: Any) -> tuple[int, Any, dict[str, str]]:
        query = {"generation": 1, "offset": 0, "length": DISK_SIZE, "block": BLOCK, **params}
        url = f"https://127.0.0.1:{self.mt.data_port}/v1/disks/{disk}/hashes"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ctx[who])) as session:
            async with session.get(url, params={k: str(v) for k, v in query.items()}) as resp:
                return resp.status, await resp.json(), dict(resp.headers)

    async def send(self, n: int, gen: int = 1) -> None:
        if gen != self.sealer.generation:
            self.sealer = Sealer(KEY, 1, bytes.fromhex(DISK), gen, bytes.fromhex(PS_ID))
        for _ in range(n):
            data = self.maker.make(gen=gen)
            url = f"https://127.0.0.1:{self.mt.data_port}/v1/disks/{DISK}/batches/{gen}/{self.maker.seq}"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ctx["ps"])) as session:
                async with session.put(url, data=self.sealer.seal(self.maker.seq, data)) as resp:
                    assert resp.status == 201, await resp.text()
        key = (gen, self.maker.seq)
        await wait_until(lambda: self.mt.workers[DISK].store.applied == key)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ca = tls.make_ca()
    cs = FakeCS()
    cs_url = await cs.start(issue(ca, tmp_path / "cs-id", "55" * 16, "cs", {}))
    data_dir = tmp_path / "mt"
    issue(ca, data_dir / "identity", MT_ID, "mt", {"component_id": MT_ID, "role": "mt", "cs_url": cs_url})
    ctx = {"none": tls.client_context(None, ca[1])}
    for name, cid, role in (("ps", PS_ID, "ps"), ("other", OTHER_PS, "ps"), ("admin", ADMIN_ID, "admin"),
                            ("agent", AGENT_ID, "agent")):
        ctx[name] = tls.client_context(issue(ca, tmp_path / f"{name}-id", cid, role, {"component_id": cid}))
    cfg = MTConfig(data_dir=data_dir, cs_url=cs_url, data_port=0, control_port=0, heartbeat_interval_s=0.2,
                   settings_wait_s=1.0, retry_max_backoff_s=0.2, hash_max_bytes=4 * BLOCK)
    w = World(cs, MTService(cfg), cfg, ctx, BatchMaker(bytes.fromhex(DISK), seed=9),
              Sealer(KEY, 1, bytes.fromhex(DISK), 1, bytes.fromhex(PS_ID)))
    cs.publish(w.document())
    await w.mt.start()
    await w.mt.wait_settings()
    try:
        yield w
    finally:
        await w.mt.stop()
        await cs.stop()


def expected(image: bytes, offset: int, length: int) -> list[str]:
    return [xxhash.xxh3_128_hexdigest(image[o:o + n]) for o, n in hashes.pieces(offset, length, BLOCK)]


@pytest.mark.timeout(30)
async def test_hashes_of_the_replica_after_seq_1_capped_per_answer(world: World) -> None:
    status, body, headers = await world.hashes()
    assert (status, body["code"]) == (503, "not_ready") and headers["Retry-After"] == "1"
    await world.send(3)
    image = world.maker.images[(1, 3)]
    status, body, _ = await world.hashes()
    assert status == 200, body
    assert (body["generation"], body["applied"], body["offset"], body["block"]) == (1, [1, 3], 0, BLOCK)
    assert body["length"] == 4 * BLOCK  # capped by hash_max_bytes, whole blocks
    assert body["hashes"] == expected(image, 0, 4 * BLOCK)
    tail = DISK_SIZE - BLOCK - 1000
    status, body, _ = await world.hashes(offset=tail, length=BLOCK + 1000)
    assert status == 200 and body["length"] == BLOCK + 1000
    assert body["hashes"] == expected(image, tail, BLOCK + 1000)  # the last block is short


@pytest.mark.timeout(30)
async def test_refusals(world: World) -> None:
    await world.send(1)
    assert (await world.hashes(who="none"))[0] == 401
    for who in ("admin", "agent", "other"):
        assert (await world.hashes(who=who))[0] == 403, who
    assert (await world.hashes(disk="cd" * 16))[0] == 404
    assert (await world.hashes(disk="not-a-disk"))[0] == 404
    for bad in ({"block": 3000}, {"offset": DISK_SIZE}, {"length": DISK_SIZE + 1}, {"generation": 0},
                {"length": "abc"}):
        status, body, _ = await world.hashes(**bad)
        assert (status, body["code"]) == (400, "bad_request"), bad
    assert world.mt.workers[DISK].store.applied == (1, 1)  # nothing changed


@pytest.mark.timeout(30)
async def test_a_new_generation_fences_the_old_and_is_not_ready_until_its_seq_1(world: World) -> None:
    await world.send(2)
    world.cs.publish(world.document(gen=2))
    await wait_until(lambda: world.mt.registry.disks[DISK].generation == 2)
    status, body, _ = await world.hashes(generation=1)
    assert (status, body["code"]) == (409, "stale_generation")
    status, body, _ = await world.hashes(generation=2)
    assert (status, body["code"]) == (503, "not_ready")
    await world.send(1, gen=2)
    status, body, _ = await world.hashes(generation=2, length=BLOCK)
    assert status == 200 and body["applied"] == [2, 1]
    assert body["hashes"] == expected(world.maker.images[(2, 1)], 0, BLOCK)
    status, body, _ = await world.hashes(generation=3)
    assert (status, body["code"]) == (503, "not_ready")
