"""Schema migrations: an empty database upgraded to head has exactly the models' schema, on both engines.

This is the guard against drift: a model changed without a migration fails here. Add a revision with
``python -m cs.db.migrations revision -m "..."`` (or, before the first release, regenerate the
baseline with ``python -m cs.db.migrations baseline``).
"""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from cs.db import meta, migrations
from cs.db.engine import Database
from cs.db.models import Alert, Base
from deploy import cli
from tests.conftest import NewDbUrl


def _summary(diff: list[Any]) -> list[str]:
    """One line per difference: the operation and what it is about (a table, column or index name)."""
    lines = []
    for entry in diff:
        first = entry[0] if isinstance(entry, list) else entry
        lines.append(" ".join(str(getattr(part, "name", part)) for part in first[:4]))
    return lines


@pytest.fixture
async def empty_url(cs_engine: str, new_db_url: NewDbUrl, tmp_path: Path) -> str:
    return await new_db_url(empty=True) or f"sqlite+aiosqlite:///{tmp_path / 'cs.db'}"


def _diff(connection: Connection) -> list[Any]:
    ctx = MigrationContext.configure(connection, opts={"compare_type": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLite cannot reflect expression indexes: checked below
        return list(compare_metadata(ctx, Base.metadata))


def test_the_migrations_have_one_head() -> None:
    assert migrations.head()


async def test_upgrading_an_empty_database_gives_the_models_schema(empty_url: str) -> None:
    db = Database(empty_url)
    try:
        assert await migrations.current(db) is None
        assert await db.upgrade() == migrations.head()
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(_diff)
        assert diff == [], f"the models and the migrations differ (add a revision): {_summary(diff)}"
    finally:
        await db.close()


async def test_two_processes_upgrading_together_migrate_once(empty_url: str) -> None:
    first, second = Database(empty_url), Database(empty_url)
    try:
        revs = await asyncio.gather(first.upgrade(), second.upgrade())
        assert revs == [migrations.head()] * 2
        assert await first.upgrade() == migrations.head()  # at head: a no-op
    finally:
        await first.close()
        await second.close()


async def test_one_open_alert_per_code_source_and_disk(empty_url: str) -> None:
    """The partial unique expression index (which autogenerate cannot compare on SQLite, so the
    comparison above does not see it): a second open alert is refused, NULL disks included; cleared ones are not."""
    db = Database(empty_url)

    def alert(disk: str | None, cleared: int | None = None) -> Alert:
        return Alert(code="806", severity="critical", source_id="ps1", disk_id=disk, message="silent",
                     raised_ns=1, cleared_ns=cleared)

    try:
        await db.upgrade()
        async with db.write() as session:
            session.add_all([alert(None), alert("d1"), alert(None, cleared=2), alert(None, cleared=3)])
        for disk in (None, "d1"):
            with pytest.raises(IntegrityError):
                async with db.write() as session:
                    session.add(alert(disk))
    finally:
        await db.close()


async def test_cs_init_brings_the_schema_to_head(empty_url: str, cs_engine: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`drlab cs init --db-url` migrates the (empty) database through alembic and initialises it."""
    db_url = empty_url if cs_engine == "postgresql" else ""
    data_dir = tmp_path / "cs-init"
    argv = ["cs", "init", "--data-dir", str(data_dir), "--port", "0", "--db-url", db_url]
    args = cli.build_parser().parse_args(argv)  # not cli.main: it would set up the process's logging
    assert await asyncio.to_thread(args.func, args) == 0
    assert "Passphrase" in capsys.readouterr().out
    db = Database(db_url or f"sqlite+aiosqlite:///{data_dir / 'cs.db'}")
    try:
        assert await migrations.current(db) == migrations.head()
        async with db.read() as session:
            assert await meta.is_initialised(session)
    finally:
        await db.close()
