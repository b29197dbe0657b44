"""The async engine and transactions of the CS database: SQLite (default) or PostgreSQL.

Write transactions are serialised, on both engines, so that the read-then-write code of the CS
(bump the settings version, look a component up then insert it, ...) never loses an update,
even between two CS processes on one database:

- **SQLite** runs in WAL mode with a busy timeout, and write transactions start with
  ``BEGIN IMMEDIATE``, so two writers (two tasks, or two CS processes on one file) queue on the
  lock instead of failing when a read transaction upgrades.
- **PostgreSQL** (``postgresql+asyncpg://``) runs at READ COMMITTED; a write transaction first
  takes a transaction-level advisory lock (:data:`WRITE_LOCK_KEY`), the equivalent of
  ``BEGIN IMMEDIATE`` across every CS process on the database. ``write(exclusive=False)`` skips
  it for a transaction whose statements are safe without it (blind updates, inserts guarded by a
  unique constraint, ``SELECT ... FOR UPDATE SKIP LOCKED`` claims). Every connection has a
  statement timeout and a lock timeout (the lock wait is bounded like SQLite's busy timeout),
  and the pool checks connections before use so a restarted server is survived.

Inside one process writes also queue on an asyncio lock, so that waiting writers do not each
hold a pooled connection (and, on SQLite, the busy timeout only matters across processes).

On PostgreSQL a :class:`Listener` (one connection outside the pool) LISTENs for the NOTIFY that
every settings-version bump sends at commit (cs/db/meta.py), so long-polls served by any CS process
wake at once; the periodic re-read of the version (cs/notify.py) stays as the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from common import errors
from common import logging as dlog

log = dlog.get("drlab.cs.db")

BUSY_TIMEOUT_MS = 10_000  # SQLite busy timeout, PostgreSQL lock_timeout: how long a writer queues
STATEMENT_TIMEOUT_MS = 30_000  # PostgreSQL: no statement runs longer
LISTEN_RETRY_S = 2.0  # PostgreSQL: pause before the listener reconnects
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000  # PostgreSQL: a stuck transaction does not hold locks forever
PG_POOL_SIZE = 10
PG_MAX_OVERFLOW = 20
PG_POOL_RECYCLE_S = 1800
# An arbitrary 64-bit key: pg_advisory_xact_lock(WRITE_LOCK_KEY) serialises exclusive writers.
WRITE_LOCK_KEY = 0x6472_6C61_6200_0001  # "drlab" + 1
# aiosqlite logs every statement with its parameters at DEBUG (disk keys among them): never let it.
logging.getLogger("aiosqlite").setLevel(logging.INFO)
_IMMEDIATE = "drlab_immediate"


def _sqlite_hooks(engine: AsyncEngine) -> None:
    sync = engine.sync_engine

    @event.listens_for(sync, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        try:
            cur.execute("PRAGMA journal_mode=WAL")  # persistent in the file: the first connection sets it
        except sqlite3.OperationalError as exc:
            # another connection holds the lock that the switch needs (its busy handler is not asked):
            # that one is a CS connection which switched the file to WAL first
            if "locked" not in str(exc):
                raise
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(sync, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _pg_engine(url: str) -> AsyncEngine:
    settings = {"statement_timeout": str(STATEMENT_TIMEOUT_MS), "lock_timeout": str(BUSY_TIMEOUT_MS),
                "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS),
                "application_name": "drlab-cs", "timezone": "UTC"}
    return create_async_engine(
        url, hide_parameters=True, pool_size=PG_POOL_SIZE, max_overflow=PG_MAX_OVERFLOW, pool_pre_ping=True,
        pool_recycle=PG_POOL_RECYCLE_S, isolation_level="READ COMMITTED",
        connect_args={"server_settings": settings, "timeout": BUSY_TIMEOUT_MS / 1000})


def engine_name(url: str) -> str:
    """``sqlite`` or ``postgresql``; anything else is refused (the CS is tested on these two only)."""
    name = make_url(url).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise errors.ConfigError(f"unsupported database {name!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://")
    return name


class Database:
    """Owns the engine; hands out read and write sessions (each one transaction)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine_name = engine_name(url)
        self.is_sqlite = self.engine_name == "sqlite"
        if self.is_sqlite:
            self.engine = create_async_engine(url, hide_parameters=True)
            _sqlite_hooks(self.engine)
        else:
            self.engine = _pg_engine(url)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"Database({make_url(self.url).render_as_string(hide_password=True)})"

    async def upgrade(self) -> str:
        """Bring the schema to the newest migration (alembic); returns that revision."""
        from cs.db import migrations  # alembic is imported only when the schema is touched

        async with self._write_lock:
            return await migrations.upgrade(self)

    async def create_all(self) -> None:
        """Kept for callers written before migrations: same as :meth:`upgrade`."""
        await self.upgrade()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """One read transaction; loaded objects stay readable after it (the pool rolls back)."""
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def write(self, *, exclusive: bool = True) -> AsyncIterator[AsyncSession]:
        """One write transaction, committed on success and rolled back on any exception.

        ``exclusive`` (the default) serialises it with every other exclusive writer of the
        database, in this process and in others; on SQLite every write is exclusive."""
        exclusive = exclusive or self.is_sqlite
        async with self._write_lock if exclusive else nullcontext(), self._sessions() as session:
            await session.connection(execution_options={_IMMEDIATE: True})
            if exclusive and not self.is_sqlite:
                await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise
            await session.commit()

    async def close(self) -> None:
        await self.engine.dispose()


class Listener:
    """PostgreSQL ``LISTEN channel`` on a connection of its own, in an owned task: awaits
    ``on_notify()`` after each notification (several at once count as one), and once after every
    (re)connection, since notifications sent while it was away are lost. Reconnects after errors."""

    def __init__(self, url: str, channel: str, on_notify: Callable[[], Awaitable[None]]) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.channel = channel
        self._on_notify = on_notify
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Listener({self.channel})"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"cs-db-listen-{self.channel}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _notified(self, *_args: Any) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server restarted or is unreachable: the re-check covers meanwhile
                log.warning("db_listen_failed", channel=self.channel, error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(LISTEN_RETRY_S)

    async def _listen(self) -> None:
        import asyncpg  # only PostgreSQL deployments need it loaded

        conn = await asyncpg.connect(self._dsn, timeout=BUSY_TIMEOUT_MS / 1000,
                                     server_settings={"application_name": "drlab-cs-listen"})
        try:
            conn.add_termination_listener(self._notified)
            await conn.add_listener(self.channel, self._notified)
            while not conn.is_closed():
                self._wake.clear()
                await self._on_notify()
                await self._wake.wait()
        finally:
            await conn.close(timeout=BUSY_TIMEOUT_MS / 1000)
