"""Hostile input at the CS (issue 9 point 5): IDs with path separators and injection attempts on every
route of the OpenAPI document, malformed and oversized bodies, an expired client certificate. Each
gets a clear 4xx JSON error (or a refused handshake) and changes no row of any table.

What other modules already cover: no certificate / bad session (test_deny_by_default), wrong role
(test_deny_by_default, test_cs_auth), another CA (test_cs_auth), revoked (test_cs_certs), replayed
or expired registration nonce (test_cs_registration), an agent on another machine's disk
(test_cs_settings, test_cs_resync), not-JSON / array / 2 MiB bodies (test_deny_by_default).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cshelpers import Site, anonymous
from ophelpers import call, client, is_error, operations, snapshot

from common import errors, tls
from cs.api import paging
from tests.hostile import HOSTILE_IDS, expired_identity


def _admin(site: Site) -> ssl.SSLContext:
    return tls.client_context(site.env.admin_files)


async def _ops(site: Site) -> list[Any]:
    status, doc, _ = await call(site.env.url, anonymous(site.env), "GET", "/v1/openapi.json")
    assert status == 200
    return [op for op in operations(doc) if "{" in op.template]


def _with(template: str, value: str) -> str:
    out = template
    while "{" in out:
        start = out.index("{")
        out = out[:start] + value + out[out.index("}", start) + 1:]
    return out


async def _db(site: Site) -> dict[str, list[tuple[Any, ...]]]:
    rows = await snapshot(site.env.service.state.db)
    rows.pop("audit", None)  # refusals may be audited: that is the log, not a change of state
    return rows


@pytest.mark.timeout(120)
async def test_hostile_ids_on_every_route_are_4xx_json_and_change_nothing(site: Site) -> None:
    agent, _ = await site.agent("m1")
    await site.ps()
    before = await _db(site)
    ops = await _ops(site)
    assert len(ops) >= 30
    admin, checked = _admin(site), 0
    async with client(admin) as as_admin, client(agent.ssl) as as_agent:  # kept-alive: no handshake per call
        for op in ops:
            for name, value in HOSTILE_IDS.items():
                ctx, session = ((agent.ssl, as_agent) if "/self/" in op.template or op.template.endswith("/progress")
                                else (admin, as_admin))
                status, body, _ = await call(site.env.url, ctx, op.method, _with(op.template, value), {},
                                             session=session)
                assert 400 <= status < 500 and is_error(body), (op.method, op.template, name, status, body)
                checked += 1
    assert await _db(site) == before
    print(f"{checked} hostile-id requests, all 4xx JSON")


async def test_a_request_line_past_the_limit_is_refused(site: Site) -> None:
    """aiohttp's own parser refuses a request line over 8190 bytes before any handler runs: 400, but
    text/plain (not our JSON: no middleware sees it), logged by ``aiohttp.server``; nothing changes."""
    before = await _db(site)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_admin(site))) as session:
        async with session.post(site.env.url + "/v1/machines/" + "a" * 9000 + "/protect", json={}) as resp:
            assert resp.status == 400
    assert await _db(site) == before


@pytest.mark.timeout(90)
async def test_hostile_query_values_are_never_5xx_and_change_nothing(site: Site) -> None:
    """Every query parameter of every GET, set to NUL, a quote, a path or a very long value: never 5xx."""
    status, doc, _ = await call(site.env.url, anonymous(site.env), "GET", "/v1/openapi.json")
    before, admin, checked = await _db(site), _admin(site), 0
    async with client(admin) as session:
        for op in operations(doc):
            names = [p["name"] for p in op.doc.get("parameters", []) if p["in"] == "query"]
            if op.method != "GET" or not names or "{" in op.template:
                continue
            for value in ("a\x00b", "x' OR '1'='1", "../../etc/passwd", "9" * 5000, "-1"):
                for name in names:
                    status, body, _ = await call(site.env.url, admin, "GET", op.template, params={name: value},
                                                 session=session)
                    assert status < 500 and (status < 400 or is_error(body)), (op.template, name, value[:20], body)
                    checked += 1
    assert checked >= 20 and await _db(site) == before


BAD_BODIES = {
    "deep nesting": b'{"name": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    "huge integer": b'{"name": "x", "role": "admin", "password": ' + b"9" * 5000 + b"}",
    "NaN": b'{"name": NaN, "role": "admin", "password": "long enough password"}',
    "invalid utf-8": b'{"name": "\xff\xfe", "role": "admin", "password": "long enough password"}',
    "lone surrogate": b'{"name": "\\ud800", "role": "admin", "password": "long enough password"}',
    "nul in a string": b'{"name": "a\\u0000b", "role": "admin", "password": "long enough password"}',
    "truncated": b'{"name": "x", "role": "adm',
    "a string": b'"just a string"',
    "null": b"null",
    "wrong types": b'{"name": 5, "role": ["admin"], "password": {"a": 1}}',
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_malformed_bodies_are_400_json_logged_and_change_nothing(site: Site, case: str,
                                                                      capfd: pytest.CaptureFixture[str]) -> None:
    before = await _db(site)
    capfd.readouterr()
    for path in ("/v1/operators", "/v1/sites", "/v1/policies", "/v1/accounts"):
        status, body, _ = await call(site.env.url, _admin(site), "POST", path, data=BAD_BODIES[case])
        assert status == 400 and is_error(body), (case, path, status, body)
    status, body, _ = await call(site.env.url, anonymous(site.env), "POST", "/v1/login", data=BAD_BODIES[case])
    assert status in (400, 401) and is_error(body), (case, status, body)
    assert await _db(site) == before
    out, err = capfd.readouterr()
    assert "request_refused" in out + err and "/v1/operators" in out + err  # each refusal is logged


async def test_an_oversized_chunked_body_is_413(site: Site) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b" " * 65536  # 2.5 MiB, no Content-Length

    before = await _db(site)
    status, body, _ = await call(site.env.url, _admin(site), "POST", "/v1/operators", data=chunks())  # type: ignore[arg-type]
    assert (status, body["code"]) == (413, "too_large")
    assert await _db(site) == before


async def test_an_expired_client_certificate_fails_the_handshake(site: Site, tmp_path: Path) -> None:
    ca_dir = site.env.data_dir / "ca"
    ca = ((ca_dir / "key.pem").read_bytes(), (ca_dir / "cert.pem").read_bytes())
    files = await expired_identity(ca, tmp_path / "expired", "ad" * 16, "admin")
    before = await _db(site)
    with pytest.raises(aiohttp.ClientError):
        await call(site.env.url, tls.client_context(files), "POST", "/v1/operators",
                   {"name": "mallory", "role": "admin", "password": "long enough password"})
    assert await _db(site) == before


def test_bounded_int_checks_the_length_before_int() -> None:
    """Regression: ``limit=<5000 digits>`` on /v1/alerts, /v1/jobs and a machine's points was a 500
    (int() refuses more than 4300 digits with a ValueError)."""
    for text in ("9" * 5000, "9" * 20, "0", "-1", "1e3", "0x10", "\u0661", ""):
        with pytest.raises(errors.BadRequest):
            paging.bounded_int(text, "limit", 1000)
    assert paging.bounded_int("0007", "limit", 1000) == 7
