"""A throwaway PostgreSQL server for tests.

:class:`PGServer` runs ``initdb`` into a temp dir and starts ``postgres`` on 127.0.0.1 with a
free port (durability off: fsync, full-page writes and synchronous commit are not needed for a
server that dies with the test session), gives each test databases without rows with
:meth:`PGServer.database` (emptied and recycled after the test: creating a database costs more
than starting a CS) and removes everything on :meth:`PGServer.stop`. Run as root, the server
runs as the ``postgres`` system user (postgres refuses root), which owns its data dir.

The binaries are looked up in ``$DRLAB_PG_BIN``, then ``/usr/lib/postgresql/<newest>/bin``,
then ``$PATH``; ``make system-deps`` installs them. When they are missing or the server does not
start, :class:`PGUnavailable` says why — the caller fails the test with it, never skips.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

START_TIMEOUT_S = 30.0
RECYCLE_LOCK_TIMEOUT_MS = 2000
STOP_TIMEOUT_S = 10.0
SERVER_USER = "postgres"
SETTINGS = {
    "fsync": "off", "full_page_writes": "off", "synchronous_commit": "off",
    "max_connections": "300", "shared_buffers": "64MB", "log_min_messages": "warning",
    "max_locks_per_transaction": "128",
}
_names = itertools.count(1)


class PGUnavailable(RuntimeError):
    """PostgreSQL could not be found or started (the message says why and how to fix it)."""


def find_bin_dir() -> Path:
    env = os.environ.get("DRLAB_PG_BIN")
    if env:
        return Path(env)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PGUnavailable("PostgreSQL is not installed (no initdb): run `make system-deps` "
                        "(apt-get install postgresql) or set DRLAB_PG_BIN")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PGServer:
    """One postgres process on 127.0.0.1:``port``, superuser ``postgres`` with trust auth."""

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="drlab-pg-"))
        self.data_dir = self.root / "data"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._free: list[str] = []  # recycled databases (see recycle)
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(SERVER_USER)
            except KeyError as exc:
                raise PGUnavailable(f"running as root needs the {SERVER_USER!r} system user") from exc
            self._as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    def __repr__(self) -> str:
        return f"PGServer(127.0.0.1:{self.port}, {self.data_dir})"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` (what CSConfig.db_url takes)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        try:
            self._initdb()
            self._start_postgres()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)  # also when the session ends without its fixture teardown

    def _run(self, *args: str) -> None:
        try:
            done = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], capture_output=True, cwd=self.root,
                                  timeout=START_TIMEOUT_S, check=False, **self._as_user)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PGUnavailable(f"cannot run {self.bin_dir / args[0]}: {exc}") from exc
        if done.returncode != 0:
            raise PGUnavailable(f"{args[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-800:]}")

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")

    def _start_postgres(self) -> None:
        self.port = free_port()
        opts = [arg for k, v in SETTINGS.items() for arg in ("-c", f"{k}={v}")]
        log = open(self.root / "postgres.log", "wb")  # noqa: SIM115 - owned by the child
        with log:
            self._proc = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1",
                 "-p", str(self.port), "-k", str(self.root), *opts],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, **self._as_user)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PGUnavailable(f"postgres exited ({self._proc.returncode}): {self._log_tail()}")
            if self._accepts():
                return
            time.sleep(0.05)
        raise PGUnavailable(f"postgres did not accept connections within {START_TIMEOUT_S} s: {self._log_tail()}")

    def _accepts(self) -> bool:
        done = subprocess.run([str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                              capture_output=True, check=False)
        return done.returncode == 0

    def _log_tail(self) -> str:
        try:
            return (self.root / "postgres.log").read_text(errors="replace")[-800:]
        except OSError:
            return "(no log)"

    async def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"drlab_{os.getpid()}_{next(_names)}"
        conn = await asyncpg.connect(self.dsn(), timeout=START_TIMEOUT_S)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.dsn(), timeout=START_TIMEOUT_S)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def database(self, *, empty: bool = False) -> str:
        """A database without rows: a recycled one (its tables emptied, its schema kept) when there is
        one, else a new one; ``empty``: always a new one, without tables. Hand it back with
        :meth:`recycle` (creating a database costs far more than emptying one)."""
        if empty or not self._free:
            return await self.create_database()
        return self._free.pop()

    async def recycle(self, name: str) -> None:
        """Empty every table of ``name`` (except alembic's version) for :meth:`database` to hand out
        again; a database still in use (its lock is not granted at once) is dropped instead."""
        try:
            conn = await asyncpg.connect(self.dsn(name), timeout=START_TIMEOUT_S)
            try:
                await conn.execute(f"SET lock_timeout = {RECYCLE_LOCK_TIMEOUT_MS}")
                tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                          "AND tablename <> 'alembic_version'")
                if tables:
                    names = ", ".join(f'"{t["tablename"]}"' for t in tables)
                    await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
            finally:
                await conn.close()
        except (OSError, TimeoutError, asyncpg.PostgresError):
            await self.drop_database(name)
            return
        self._free.append(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL if it lingers; removes the data dir."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)
        shutil.rmtree(self.root, ignore_errors=True)
