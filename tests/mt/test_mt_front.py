"""The MT's data port behind the threaded TLS front (mt/front.py, common/batchfront.py): what only
the front does — the body limit before any byte is read, a client's certificate header never
believed, the relay socket private, the hashes route relayed with the caller's identity. The
ingest rules in both modes: tests/mt/test_mt_service.py (parametrized over ``ingest_front``)."""

from __future__ import annotations

import asyncio

from mtbatches import DISK_SIZE

from common.frontproto import PEER_CERT_HEADER
from common.tlsfront import encode_peercert
from mt.ingest import sealed_limit
from tests.mt import test_mt_service as service
from tests.mt.test_mt_service import ADMIN_ID, DISK, PS_ID, World
from tests.tlsraw import raw_exchange

world = service.world  # the fixture: an MT (ingest_front on) with a stand-in CS


def forged(cid: str, role: str) -> str:
    return encode_peercert({"subject": [[["commonName", cid]], [["organizationalUnitName", role]]],
                            "serialNumber": "01"}) or ""


async def test_the_front_serves_the_data_port_from_a_private_socket(world: World) -> None:
    front = world.mt._front
    assert front is not None and front.path is not None
    path = front.path
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    await world.mt.stop()
    assert not path.exists()


async def test_an_oversized_body_is_413_before_it_is_read(world: World) -> None:
    too_big = sealed_limit(world.cfg.max_batch_bytes) + 1
    head = (f"PUT /v1/disks/{DISK}/batches/1/1 HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {too_big}\r\n\r\n").encode()
    answer = await asyncio.to_thread(raw_exchange, world.mt.data_port, world.ctx["ps"], head)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"too_large"' in answer
    assert world.staged() == []


async def test_a_certificate_header_from_the_client_is_not_believed(world: World) -> None:
    data = world.maker.make()
    sealed = world.sealer.seal(1, data)
    url = f"https://127.0.0.1:{world.mt.data_port}/v1/disks/{DISK}/batches/1/1"
    for who, claim in (("none", forged(PS_ID, "ps")), ("admin", forged(PS_ID, "ps"))):
        status, body = await world.call(who, "PUT", url, sealed, {PEER_CERT_HEADER: claim})
        assert status in (401, 403), body
    hashes = f"https://127.0.0.1:{world.mt.data_port}/v1/disks/{DISK}/hashes?generation=1&offset=0&length=4096"
    status, _ = await world.call("none", "GET", hashes, None, {PEER_CERT_HEADER: forged(ADMIN_ID, "admin")})
    assert status == 401
    assert world.staged() == [] and world.mt.workers[DISK].store.applied == (0, 0)


async def test_the_hashes_route_is_relayed_with_the_callers_identity(world: World) -> None:
    assert (await world.send_next())[0] == 201
    await service.wait_until(lambda: world.mt.workers[DISK].store.applied == (1, 1))
    query = f"generation=1&offset=0&length={DISK_SIZE}&block=4096"
    url = f"https://127.0.0.1:{world.mt.data_port}/v1/disks/{DISK}/hashes?{query}"
    status, body = await world.call("ps", "GET", url)
    assert status == 200, body
    assert body["applied"] == [1, 1] and len(body["hashes"]) == DISK_SIZE // 4096
    status, body = await world.call("none", "GET", url)
    assert status == 401 and body["code"] == "unauthorized"
