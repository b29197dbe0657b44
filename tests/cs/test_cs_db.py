"""The database layer: SQLite pragmas, and writers in two "processes" (two engines) on one file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from cs.db import meta
from cs.db.engine import BUSY_TIMEOUT_MS, Database


async def test_sqlite_runs_in_wal_with_a_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        await db.create_all()
        async with db.read() as session:
            assert (await session.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await session.execute(text("PRAGMA busy_timeout"))).scalar() == BUSY_TIMEOUT_MS
    finally:
        await db.close()


async def test_concurrent_writers_on_two_engines_lose_no_update(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first, second = Database(url), Database(url)
    try:
        await first.create_all()
        await second.create_all()

        async def bump(db: Database) -> None:
            async with db.write() as session:
                await meta.bump_version(session)  # read, then write: needs BEGIN IMMEDIATE across engines

        await asyncio.gather(*(bump(db) for _ in range(25) for db in (first, second)))
        async with first.read() as session:
            assert await meta.settings_version(session) == 50
    finally:
        await first.close()
        await second.close()


async def test_failed_write_changes_nothing(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'y.db'}")
    try:
        await db.create_all()
        try:
            async with db.write() as session:
                await meta.bump_version(session)
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        async with db.read() as session:
            assert await meta.settings_version(session) == 0
    finally:
        await db.close()
