"""Operators: scrypt-hashed passwords, sessions (bearer and cookie), roles admin and reader (a reader
changes nothing: every non-GET route of the OpenAPI document answers 403), the login brake and the CLI."""

from __future__ import annotations

import asyncio
import base64
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Site, anonymous
from ophelpers import PUBLIC, call, is_error, operations, snapshot

from common import tls
from cs import operators
from deploy import cli
from tests.conftest import stored_bytes

PASSWORD = "correct horse battery"


@pytest.fixture
async def site(cs_factory: Any, tmp_path: Path) -> AsyncIterator[Site]:
    env = await cs_factory(login_fail_burst=3, login_fail_interval_s=60.0)
    s = Site(env, tmp_path)
    yield s
    await s.close()


def _admin(site: Site) -> Any:
    return tls.client_context(site.env.admin_files)


async def _add(site: Site, name: str, role: str, password: str = PASSWORD) -> dict[str, Any]:
    status, body, _ = await call(site.env.url, _admin(site), "POST", "/v1/operators",
                                 {"name": name, "role": role, "password": password})
    assert status == 201, body
    return dict(body)


async def _login(site: Site, name: str, password: str = PASSWORD) -> tuple[int, Any, Any]:
    return await call(site.env.url, anonymous(site.env), "POST", "/v1/login", {"name": name, "password": password})


# ------------------------------------------------------------------ pure


def test_password_hash_has_its_own_salt_and_parameters() -> None:
    kdf = {"alg": "scrypt", "n": 2**10, "r": 8, "p": 1, "dklen": 32}
    a, b = operators.hash_password("s3cret-pass", kdf), operators.hash_password("s3cret-pass", kdf)
    assert a.salt_b64 != b.salt_b64 and a.hash_b64 != b.hash_b64 and a.kdf == kdf
    assert len(base64.b64decode(a.salt_b64)) == operators.SALT_BYTES
    assert operators.check_password("s3cret-pass", a) and not operators.check_password("s3cret-pasS", a)
    assert "s3cret" not in repr(a) and a.hash_b64 not in repr(a)
    assert operators.hash_password("x" * 8).kdf == operators.KDF  # the defaults are stored with the hash


def test_failure_limiter_is_a_leaky_bucket() -> None:
    now = [0.0]
    lim = operators.FailureLimiter(3, 10.0, clock=lambda: now[0], max_addresses=2)
    for _ in range(2):
        lim.failed("a")
        assert lim.retry_after("a") == 0
    lim.failed("a")
    assert lim.retry_after("a") == pytest.approx(10.0)
    assert lim.retry_after("b") == 0  # per address
    now[0] = 10.0
    assert lim.retry_after("a") == 0  # one failure leaked away
    lim.failed("a")
    assert lim.retry_after("a") > 0
    lim.succeeded("a")
    assert lim.retry_after("a") == 0
    for addr in ("x", "y", "z"):
        lim.failed(addr)
    assert len(lim._level) == 2  # bounded memory


# ------------------------------------------------------------------ logins and sessions


async def test_login_sessions_cookie_and_logout(site: Site) -> None:
    await _add(site, "alice", "admin")
    status, body, resp = await _login(site, "alice")
    assert status == 200 and body["role"] == "admin" and body["name"] == "alice"
    token = body["token"]
    morsel = resp.cookies["drlab_session"]
    assert morsel.value == token and morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Strict"
    url, anon = site.env.url, anonymous(site.env)
    for creds in ({"token": token}, {"cookie": token}):
        status, me, _ = await call(url, anon, "GET", "/v1/whoami", **creds)
        assert (status, me) == (200, {"name": "alice", "role": "admin", "via": "session"})
    async with site.env.service.state.db.read() as session:  # type: ignore[union-attr]
        from sqlalchemy import select

        from cs.db.models_access import OperatorSession
        stored = (await session.scalars(select(OperatorSession))).all()
    assert [s.token_sha256 for s in stored] == [operators.token_hash(token)]  # only the hash is kept
    status, body, resp = await call(url, anon, "POST", "/v1/logout", {}, token=token)
    assert status == 200 and resp.cookies["drlab_session"].value == ""
    status, body, _ = await call(url, anon, "GET", "/v1/whoami", token=token)
    assert (status, body["code"]) == (401, "unauthorized")
    status, body, _ = await call(url, _admin(site), "POST", "/v1/logout", {})
    assert status == 400  # a certificate has no session to end


async def test_failed_logins_look_alike_and_keep_no_password(site: Site, capfd: pytest.CaptureFixture[str]) -> None:
    await _add(site, "bob", "reader")
    wrong = await _login(site, "bob", "wrong password")
    unknown = await _login(site, "nobody", PASSWORD)
    assert wrong[0] == unknown[0] == 401 and wrong[1] == unknown[1]
    assert wrong[1]["message"] == operators.LOGIN_FAILED
    db_bytes = await stored_bytes(site.env)  # SQLite files, or the PostgreSQL rows
    assert PASSWORD.encode() not in db_bytes
    token = (await _login(site, "bob"))[1]["token"]
    out, err = capfd.readouterr()
    assert "operator_login" in out + err  # the CS logs here, and never the password or the token
    assert PASSWORD not in out + err and token not in out + err


async def test_failed_logins_are_limited_per_address(site: Site) -> None:
    await _add(site, "carol", "admin")
    for _ in range(3):
        assert (await _login(site, "carol", "bad password"))[0] == 401
    status, body, resp = await _login(site, "carol")  # even the right password waits now
    assert (status, body["code"]) == (429, "too_many_attempts") and is_error(body)
    assert int(resp.headers["Retry-After"]) >= 1


async def test_disabled_changed_and_removed_operators_lose_their_sessions(site: Site) -> None:
    await _add(site, "dave", "admin")
    url, anon, admin = site.env.url, anonymous(site.env), _admin(site)
    token = (await _login(site, "dave"))[1]["token"]
    assert (await call(url, admin, "PUT", "/v1/operators/dave", {"password": "another password"}))[0] == 200
    assert (await call(url, anon, "GET", "/v1/whoami", token=token))[0] == 401
    assert (await _login(site, "dave", "another password"))[0] == 200
    assert (await call(url, admin, "PUT", "/v1/operators/dave", {"disabled": True}))[0] == 200
    assert (await _login(site, "dave", "another password"))[0] == 401
    assert (await call(url, admin, "DELETE", "/v1/operators/dave"))[0] == 200
    assert (await call(url, admin, "DELETE", "/v1/operators/dave"))[0] == 404
    for bad in ({"name": "x y", "role": "admin", "password": PASSWORD},
                {"name": "e", "role": "root", "password": PASSWORD},
                {"name": "e", "role": "admin", "password": "short"}, {"name": "e", "role": "admin"}):
        status, body, _ = await call(url, admin, "POST", "/v1/operators", bad)
        assert status == 400 and is_error(body) and PASSWORD not in body["message"], bad
    await _add(site, "erin", "reader")
    assert (await call(url, admin, "POST", "/v1/operators", {"name": "erin", "role": "admin",
                                                              "password": PASSWORD}))[0] == 409


async def test_expired_session_is_refused(cs_factory: Any, tmp_path: Path) -> None:
    site = Site(await cs_factory(session_ttl_s=0.3), tmp_path)
    await _add(site, "frank", "admin")
    token = (await _login(site, "frank"))[1]["token"]
    assert (await call(site.env.url, anonymous(site.env), "GET", "/v1/components", token=token))[0] == 200
    await asyncio.sleep(0.5)
    assert (await call(site.env.url, anonymous(site.env), "GET", "/v1/components", token=token))[0] == 401


# ------------------------------------------------------------------ roles


async def test_a_reader_changes_nothing(site: Site) -> None:
    """Every non-GET route of the document answers 403 to a reader; the database is unchanged."""
    agent, disks = await site.agent("m1", {"disk0": 1 << 20})
    await site.ps()
    url, anon = site.env.url, anonymous(site.env)
    assert (await call(url, _admin(site), "PUT", "/v1/groups/g1", {"machines": [agent.component_id]}))[0] == 200
    await _add(site, "rita", "reader")
    token = (await _login(site, "rita"))[1]["token"]
    doc = (await call(url, anon, "GET", "/v1/openapi.json"))[1]
    db = site.env.service.state.db  # type: ignore[union-attr]
    before = await snapshot(db)
    tried = 0
    for op in operations(doc):
        if op.method == "GET" or (op.method, op.template) in PUBLIC or op.template == "/v1/logout":
            continue
        path = op.path.replace("ab" * 16, disks["disk0"]) if "/disks/" in op.template else op.path
        for creds in ({"token": token}, {"cookie": token}):
            status, body, _ = await call(url, anon, op.method, path, {"machines": [], "point": "latest"}, **creds)
            assert (status, body["code"]) == (403, "forbidden"), (op.method, path, body)
        tried += 1
    assert tried >= 20
    assert await snapshot(db) == before


async def test_a_reader_reads_lists_and_an_admin_session_changes_things(site: Site) -> None:
    agent, _ = await site.agent("m1")
    await _add(site, "rita", "reader")
    await _add(site, "adam", "admin")
    url, anon = site.env.url, anonymous(site.env)
    reader = (await _login(site, "rita"))[1]["token"]
    admin = (await _login(site, "adam"))[1]["token"]
    for path in ("/v1/components", "/v1/disks", "/v1/groups", "/v1/bookmarks", "/v1/alerts", "/v1/jobs",
                 "/v1/operators"):
        status, body, _ = await call(url, anon, "GET", path, token=reader, params={"limit": "10"})
        assert status == 200 and "items" in body and "next" in body, (path, body)
    status, body, _ = await call(url, anon, "PUT", "/v1/groups/g1", {"machines": [agent.component_id]}, token=admin)
    assert status == 200 and body["machines"] == [agent.component_id]
    status, body, _ = await call(url, anon, "PUT", "/v1/groups/g2", {"machines": [agent.component_id]}, token=reader)
    assert status == 403
    status, body, _ = await call(url, anon, "POST", "/v1/logout", {}, token=reader)
    assert status == 200
    status, body, _ = await call(url, agent.ssl, "GET", "/v1/operators")
    assert status == 403  # a component is no operator


# ------------------------------------------------------------------ the CLI


async def test_cli_manages_operators_with_the_password_on_stdin(site: Site, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--cs-url", site.env.url, "--admin-dir", str(site.env.admin_files.directory)]

    def run(argv: list[str], stdin: str = "") -> int:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return cli.main(base + argv)

    assert await asyncio.to_thread(run, ["operator", "add", "gina", "--role", "reader"], PASSWORD + "\n") == 0
    assert (await _login(site, "gina"))[0] == 200
    assert await asyncio.to_thread(run, ["--json", "operator", "list"]) == 0
    out = capsys.readouterr().out
    assert '"gina"' in out and PASSWORD not in out and "hash" not in out
    assert await asyncio.to_thread(run, ["operator", "passwd", "gina"], "a new password\n") == 0
    assert (await _login(site, "gina", "a new password"))[0] == 200
    assert await asyncio.to_thread(run, ["operator", "set", "gina", "--role", "admin"]) == 0
    assert await asyncio.to_thread(run, ["operator", "add", "hal", "--role", "admin"], "short\n") == 2
    assert await asyncio.to_thread(run, ["operator", "remove", "gina"]) == 0
    assert await asyncio.to_thread(run, ["operator", "remove", "gina"]) == 2
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["operator", "add", "x", "--role", "admin", "--password", "p"])
