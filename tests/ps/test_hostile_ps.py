"""Hostile input at the PS data port (9443) through its threaded TLS front (issue 9 point 5): IDs with
path separators and injection attempts, garbage generations and sequence numbers, an expired
certificate, a certificate of another role. Each gets a 4xx JSON error (or a refused handshake) and
caches nothing.

Already covered elsewhere (tests/ps/test_ps_front.py unless named): no certificate, a revoked one,
an MT/admin certificate on a batch PUT, another agent's disk (the "not its own disk" case), stale
generation, malformed batches (and test_ps_ingest.py), an oversized Content-Length (413 before the
body is read), missing length, bad request lines and headers, slow requests, a forged peer-cert header.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from psbatches import make_batch
from test_ps_front import DISK, MACHINE_A, PS, ps  # noqa: F401  (the fixture of the PS behind its front)

from common import tls
from tests.hostile import HOSTILE_IDS, capture_ca, expired_identity  # noqa: F401  (capture_ca: a fixture)


def _refused(status: int, body: object) -> bool:
    return 400 <= status < 500 and isinstance(body, dict) and isinstance(body.get("code"), str)


@pytest.mark.timeout(60)
async def test_hostile_disk_ids_are_4xx_json_and_cache_nothing(ps: PS) -> None:  # noqa: F811
    batch = make_batch(DISK, 2, 1)
    for name, value in HOSTILE_IDS.items():
        for method, path, body in (("PUT", f"/v1/disks/{value}/batches/2/1", batch),
                                   ("GET", f"/v1/disks/{value}/status", None)):
            status, answer, _ = await ps.call("a", method, path, body)
            assert _refused(status, answer), (name, method, status, answer)
    assert ps.cached() == [] and ps.woken == []


@pytest.mark.parametrize("gen, seq", [("-1", "1"), ("2", "-1"), ("abc", "1"), ("2", "1e3"), ("2", "0x10"),
                                      ("2", "9" * 30), ("9" * 30, "1"), ("2", "1%00"), ("2", "%2e%2e"),
                                      ("2", "1;rm"), ("2", "1%2F..%2F..")])
async def test_garbage_generations_and_sequences_are_4xx_json(ps: PS, gen: str, seq: str) -> None:  # noqa: F811
    status, body, _ = await ps.call("a", "PUT", f"/v1/disks/{DISK}/batches/{gen}/{seq}", make_batch(DISK, 2, 1))
    assert _refused(status, body), (gen, seq, status, body)
    assert ps.cached() == [] and ps.woken == []


async def test_an_expired_agent_certificate_fails_the_handshake(capture_ca: list[tuple[bytes, bytes]],  # noqa: F811
                                                                ps: PS, tmp_path: Path) -> None:  # noqa: F811
    files = await expired_identity(capture_ca[0], tmp_path / "expired", MACHINE_A, "agent")
    ps.ctx["expired"] = tls.client_context(files)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await ps.call("expired", "PUT", f"/v1/disks/{DISK}/batches/2/1", make_batch(DISK, 2, 1))
    assert ps.cached() == [] and ps.woken == []
    assert (await ps.put("a", 2, 1, make_batch(DISK, 2, 1)))[0] == 201  # the valid one still gets in


async def test_a_ps_certificate_is_not_an_agent(capture_ca: list[tuple[bytes, bytes]],  # noqa: F811
                                                ps: PS, tmp_path: Path) -> None:  # noqa: F811
    """A PS (another one, or the same id as the owner) may not write batches nor read status."""
    for cid in ("33" * 16, MACHINE_A):
        files = tls.IdentityFiles(tmp_path / f"ps-{cid[:2]}")
        tls.issue_local(*capture_ca[0], files, component_id=cid, role="ps", hosts=["127.0.0.1"],
                        meta={"component_id": cid})
        ps.ctx["other-ps"] = tls.client_context(files)
        status, body, _ = await ps.call("other-ps", "PUT", f"/v1/disks/{DISK}/batches/2/1", make_batch(DISK, 2, 1))
        assert (status, body["code"]) == (403, "forbidden")
        status, body, _ = await ps.call("other-ps", "GET", f"/v1/disks/{DISK}/status")
        assert (status, body["code"]) == (403, "forbidden")
    assert ps.cached() == [] and ps.woken == []


async def test_bodies_the_front_refuses(ps: PS) -> None:  # noqa: F811
    head = f"PUT /v1/disks/{DISK}/batches/2/1 HTTP/1.1\r\nHost: ps\r\n"
    cases = {
        "negative length": (head + "Content-Length: -5\r\n\r\n").encode(),
        "length and chunked": (head + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello").encode(),
        "chunked only": (head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode(),
        "two lengths": (head + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!").encode(),
        "huge length": (head + f"Content-Length: {'9' * 40}\r\n\r\n").encode(),
        "NUL in the path": f"PUT /v1/disks/{DISK}\x00/batches/2/1 HTTP/1.1\r\nContent-Length: 1\r\n\r\nx".encode(),
        "header too long": (head + "X-Junk: " + "j" * 70_000 + "\r\nContent-Length: 1\r\n\r\nx").encode(),
    }
    for name, data in cases.items():
        out = await ps.raw("a", data)
        assert out[:10] in (b"HTTP/1.1 4",) and b'"code"' in out, (name, out[:200])
    assert ps.cached() == [] and ps.woken == []
