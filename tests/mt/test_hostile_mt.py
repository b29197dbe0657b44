"""Hostile input at the MT's data and control ports (issue 9 point 5): IDs with path separators and
injection attempts, garbage generations and sequence numbers, an oversized or garbage body, a
tampered seal header or tag, an expired certificate, an agent certificate. Each gets a 4xx (JSON
where the MT answers; a refused handshake for the certificate) and the replica, the staged batches
and the applied position stay as they were.

Written against behaviour (status and JSON code), not the receive path's internals: the data port's
front may change. Already covered in tests/mt/test_mt_service.py: no certificate, an admin or another
PS on a batch PUT, a tampered body byte, a seal of another seq, stale generation, checksum mismatch;
revoked PS at the MT: tests/cs/test_cs_certs.py.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from test_mt_service import DISK, PS_ID, World, wait_until, world  # noqa: F401  (world: the fixture)

from common import tls
from tests.hostile import HOSTILE_IDS, capture_ca, expired_identity  # noqa: F401  (capture_ca: a fixture)
from tests.tlsraw import raw_exchange


async def _state(world: World) -> tuple[bytes, list[str], Any]:  # noqa: F811
    """What must not change: the replica's bytes, the disk's status (received, applied), and no
    batch but the first one staged (that one may be pruned once applied)."""
    replica = world.cfg.data_dir / "replicas" / f"{DISK}.img"
    status, body = await world.control(f"/v1/disks/{DISK}/status")
    assert status == 200
    staged = [p.name for p in world.staged() if not p.name.startswith("00000001-000000000001.")]
    return replica.read_bytes() if replica.exists() else b"", staged, body


async def _one_applied(world: World) -> tuple[bytes, list[str], Any]:  # noqa: F811
    assert (await world.send_next())[0] == 201
    await wait_until(lambda: world.mt.workers[DISK].store.applied == (1, 1))
    return await _state(world)


def _refused(status: int, body: object) -> bool:
    return 400 <= status < 500 and isinstance(body, dict) and isinstance(body.get("code"), str)


async def _call(world: World, who: str, method: str, url: str, data: bytes | None = None) -> tuple[int, Any]:  # noqa: F811
    try:
        return await world.call(who, method, url, data)
    except ValueError:  # not JSON (aiohttp's ContentTypeError is one)
        return 0, None


@pytest.mark.timeout(60)
async def test_hostile_ids_on_both_ports_are_4xx_json_and_change_nothing(world: World) -> None:  # noqa: F811
    before = await _one_applied(world)
    data, control = f"https://127.0.0.1:{world.mt.data_port}", f"https://127.0.0.1:{world.mt.control_port}"
    sealed = world.sealer.seal(2, world.maker.make())
    for name, value in HOSTILE_IDS.items():
        for who, method, url, body in (("ps", "PUT", f"{data}/v1/disks/{value}/batches/1/2", sealed),
                                       ("ps", "GET", f"{data}/v1/disks/{value}/status", None),
                                       ("admin", "GET", f"{control}/v1/disks/{value}/status", None),
                                       ("admin", "GET", f"{control}/v1/disks/{value}/points", None)):
            status, answer = await _call(world, who, method, url, body)
            assert _refused(status, answer), (name, method, url[:120], status, answer)
    assert await _state(world) == before


@pytest.mark.parametrize("gen, seq", [("-1", "2"), ("1", "-2"), ("abc", "2"), ("1", "2e0"), ("1", "9" * 30),
                                      ("9" * 30, "2"), ("1", "2%00"), ("1", "%2e%2e"), ("1", "2%2F..%2F..")])
async def test_garbage_generations_and_sequences_are_4xx_json(world: World, gen: str, seq: str) -> None:  # noqa: F811
    before = await _one_applied(world)
    url = f"https://127.0.0.1:{world.mt.data_port}/v1/disks/{DISK}/batches/{gen}/{seq}"
    status, body = await _call(world, "ps", "PUT", url, world.sealer.seal(2, world.maker.make()))
    assert _refused(status, body), (gen, seq, status, body)
    assert await _state(world) == before


async def test_tampered_seal_header_tag_or_garbage_body_is_400(world: World) -> None:  # noqa: F811
    before = await _one_applied(world)
    sealed = world.sealer.seal(2, world.maker.make())
    cases = {"tag": bytes(sealed[:-1]) + bytes([sealed[-1] ^ 1]), "header": bytes([sealed[0] ^ 1]) + sealed[1:],
             "truncated": sealed[: len(sealed) // 2], "garbage": b"\x00" * 200, "empty": b""}
    for name, body in cases.items():
        status, answer = await world.put(1, 2, body)
        assert status == 400 and answer["code"] in ("tampered_seal", "malformed_batch"), (name, status, answer)
    assert await _state(world) == before


async def test_an_oversized_body_is_413_before_it_is_read(world: World) -> None:  # noqa: F811
    before = await _one_applied(world)
    head = (f"PUT /v1/disks/{DISK}/batches/1/2 HTTP/1.1\r\nHost: mt\r\nContent-Length: {1 << 40}\r\n\r\n"
            "only a few bytes")
    out = await asyncio.to_thread(raw_exchange, world.mt.data_port, world.ctx["ps"], head.encode(), 5.0)
    assert out.startswith(b"HTTP/1.1 413 ") and b'"too_large"' in out, out[:200]
    assert await _state(world) == before


async def test_an_agent_certificate_gets_nothing(capture_ca: list[tuple[bytes, bytes]],  # noqa: F811
                                                 world: World, tmp_path: Path) -> None:  # noqa: F811
    """An agent (even one claiming the PS's id) may not write batches nor read the MT's status."""
    before = await _one_applied(world)
    sealed = world.sealer.seal(2, world.maker.make())
    for cid in ("a1" * 16, PS_ID):
        files = tls.IdentityFiles(tmp_path / f"agent-{cid[:2]}")
        tls.issue_local(*capture_ca[0], files, component_id=cid, role="agent", hosts=["127.0.0.1"],
                        meta={"component_id": cid})
        world.ctx["agent"] = tls.client_context(files)
        status, body = await world.put(1, 2, sealed, who="agent")
        assert (status, body["code"]) == (403, "forbidden")
        status, body = await world.control(f"/v1/disks/{DISK}/status", who="agent")
        assert (status, body["code"]) == (403, "forbidden")
    assert await _state(world) == before


async def test_an_expired_ps_certificate_fails_the_handshake(capture_ca: list[tuple[bytes, bytes]],  # noqa: F811
                                                             world: World, tmp_path: Path) -> None:  # noqa: F811
    before = await _one_applied(world)
    world.ctx["expired"] = tls.client_context(await expired_identity(capture_ca[0], tmp_path / "old", PS_ID, "ps"))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await world.put(1, 2, world.sealer.seal(2, world.maker.make()), who="expired")
    assert await _state(world) == before
