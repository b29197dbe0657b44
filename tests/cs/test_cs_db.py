"""The database layer on both engines: SQLite pragmas, PostgreSQL session settings, and writers in two
"processes" (two engines) on one database that lose no update."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from common import errors
from cs.db import meta
from cs.db.engine import BUSY_TIMEOUT_MS, STATEMENT_TIMEOUT_MS, Database
from cs.db.models import Component
from tests.conftest import NewDbUrl
from tests.pgserver import PGServer, PGUnavailable


@pytest.fixture
async def db_url(cs_engine: str, new_db_url: NewDbUrl, tmp_path: Path) -> str:
    """A migrated, empty database of the test's engine."""
    url = await new_db_url() or f"sqlite+aiosqlite:///{tmp_path / 'cs.db'}"
    db = Database(url)
    try:
        await db.upgrade()
    finally:
        await db.close()
    return url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    try:
        yield database
    finally:
        await database.close()


async def test_sqlite_runs_in_wal_with_a_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        await db.upgrade()
        async with db.read() as session:
            assert (await session.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await session.execute(text("PRAGMA busy_timeout"))).scalar() == BUSY_TIMEOUT_MS
    finally:
        await db.close()


def test_unsupported_engines_are_refused() -> None:
    with pytest.raises(errors.ConfigError, match="unsupported database"):
        Database("mysql+aiomysql://u@h/db")


async def test_concurrent_writers_on_two_engines_lose_no_update(db_url: str) -> None:
    first, second = Database(db_url), Database(db_url)
    try:
        async def bump(db: Database) -> None:
            async with db.write() as session:
                await meta.bump_version(session)  # read, then write: needs the write lock across engines

        await asyncio.gather(*(bump(db) for _ in range(25) for db in (first, second)))
        async with first.read() as session:
            assert await meta.settings_version(session) == 50
    finally:
        await first.close()
        await second.close()


async def test_failed_write_changes_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.write() as session:
            await meta.bump_version(session)
            raise RuntimeError("boom")
    async with db.read() as session:
        assert await meta.settings_version(session) == 0


async def test_types_hold_what_the_cs_stores(db: Database) -> None:
    """Nanosecond times beyond 32 bits, JSON documents and 255-character host ids round-trip."""
    now = time.time_ns()
    row = Component(component_id="c" * 32, role="agent", host_id="h" * 255, address="a" * 255,
                    ports={"nbd": 10809, "nested": {"list": [1, 2]}}, version="1", cert_serial="f" * 64,
                    registered_at=now, last_heartbeat=now, metrics={"cpu": 0.5})
    async with db.write() as session:
        session.add(row)
    async with db.read() as session:
        got = await session.get(Component, "c" * 32)
    assert got is not None and got.registered_at == now and got.ports["nested"] == {"list": [1, 2]}
    assert got.host_id == "h" * 255 and got.metrics == {"cpu": 0.5}


async def test_postgresql_sessions_have_timeouts(db: Database, cs_engine: str) -> None:
    if cs_engine != "postgresql":
        return  # SQLite: the busy timeout above
    async with db.read() as session:
        lock = (await session.execute(text("SHOW lock_timeout"))).scalar()
        stmt = (await session.execute(text("SHOW statement_timeout"))).scalar()
        iso = (await session.execute(text("SHOW transaction_isolation"))).scalar()
    assert lock == f"{BUSY_TIMEOUT_MS // 1000}s" and stmt == f"{STATEMENT_TIMEOUT_MS // 1000}s"
    assert iso == "read committed"


async def test_postgresql_exclusive_writers_queue_across_processes(db_url: str, cs_engine: str) -> None:
    """An exclusive writer of another engine waits for the first one's commit; a non-exclusive one does not."""
    if cs_engine != "postgresql":
        return  # SQLite: BEGIN IMMEDIATE, covered by the lost-update test
    first, second = Database(db_url), Database(db_url)
    try:
        holding, release = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with first.write() as session:
                await meta.bump_version(session)
                holding.set()
                await release.wait()

        holder = asyncio.create_task(hold(), name="test-hold-write-lock")
        await holding.wait()
        async with second.write(exclusive=False) as session:  # does not wait for the lock
            await session.execute(text("SELECT 1"))
        waiter = asyncio.create_task(_bump_once(second), name="test-wait-write-lock")
        await asyncio.sleep(0.3)
        assert not waiter.done()  # queued behind the holder
        release.set()
        await asyncio.wait_for(asyncio.gather(holder, waiter), 5)
        async with first.read() as session:
            assert await meta.settings_version(session) == 2
    finally:
        await first.close()
        await second.close()


async def _bump_once(db: Database) -> None:
    async with db.write() as session:
        await meta.bump_version(session)


async def test_postgresql_refuses_a_too_long_string(db: Database, cs_engine: str) -> None:
    """What SQLite hides: a value longer than its column fails on PostgreSQL (callers validate first)."""
    if cs_engine != "postgresql":
        return
    with pytest.raises(DBAPIError):
        async with db.write() as session:
            session.add(Component(component_id="x", role="agent", host_id="h" * 256, address="a", ports={},
                                  version="", cert_serial="1", registered_at=1, metrics={}))


def test_a_missing_postgresql_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the [postgresql] tests fail with (never a skip) when the server cannot run."""
    monkeypatch.setenv("DRLAB_PG_BIN", str(tmp_path / "nowhere"))
    server = PGServer()
    with pytest.raises(PGUnavailable, match="cannot run .*initdb"):
        server.start()
    assert not server.root.exists()  # cleaned up
