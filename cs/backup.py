"""``drlab cs backup`` / ``restore``: the CS's database and CA in one encrypted archive.

What is saved: the database (SQLite: a consistent online copy made with SQLite's backup API;
PostgreSQL or any other engine: a logical export of every table, read in one REPEATABLE READ
transaction through SQLAlchemy), the CA's key and certificate, the CS's server identity, the
admin identity and the passphrase file. A restore into a fresh data dir gives a CS that the
fleet keeps using with the certificates it already holds (same CA, same server identity).

The archive holds secrets, so it is encrypted: its format, sealing and opening are in
cs/backup_archive.py. The plaintext is a tar.gz of the database (``db.sqlite`` or ``db.json``), the
files above and a ``manifest.json``; a restore checks the archive is complete before it writes anything.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import json
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Integer, LargeBinary, Table, create_engine, insert, select, text
from sqlalchemy.engine import make_url

from common import errors, tls
from common import logging as dlog
from common.config import CSConfig
from cs import accounts
from cs.backup_archive import FORMAT, Password, open_sealed, seal
from cs.ca import Layout
from cs.db import meta
from cs.db.engine import Database
from cs.db.models import Base

log = dlog.get("drlab.cs.backup")

SECRET_NAMES = ("ca/key.pem", "identity/key.pem", "admin/key.pem", "passphrase.txt", accounts.KEY_FILE)


# ------------------------------------------------------------------ the database


def _encode(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for col in table.columns:
        value = row.get(col.name)
        if isinstance(value, bytes | bytearray | memoryview):
            value = base64.b64encode(bytes(value)).decode()
        elif isinstance(value, dt.datetime):
            value = value.isoformat()
        out[col.name] = value
    return out


def _decode(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for col in table.columns:
        if col.name not in row:
            continue
        value = row[col.name]
        if value is not None and isinstance(col.type, LargeBinary):
            value = base64.b64decode(value)
        elif value is not None and isinstance(col.type, DateTime):
            value = dt.datetime.fromisoformat(value)
        out[col.name] = value
    return out


async def export_rows(db: Database) -> dict[str, Any]:
    """Every table of the models plus the schema revision, read in one consistent transaction."""
    async with db.read() as session:
        if not db.is_sqlite:
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        revision = (await session.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        tables = {}
        for table in Base.metadata.sorted_tables:
            rows = (await session.execute(select(table))).mappings().all()
            tables[table.name] = [_encode(table, dict(r)) for r in rows]
    return {"revision": revision, "tables": tables}


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise errors.ConfigError("an in-memory SQLite database cannot be backed up")
    return Path(database)


def sqlite_snapshot(url: str) -> bytes:
    """A consistent copy of a live SQLite database (SQLite's online backup API)."""
    path = _sqlite_path(url)
    if not path.exists():
        raise errors.ConfigError(f"no database at {path}")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.db"
        src, dst = sqlite3.connect(f"file:{path}?mode=ro", uri=True), sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        return copy.read_bytes()


def rows_of_sqlite_file(data: bytes) -> dict[str, Any]:
    """The logical export of a SQLite file (to restore it into another engine)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "source.db"
        path.write_bytes(data)
        engine = create_engine(f"sqlite:///{path}")
        try:
            with engine.connect() as conn:
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                tables = {t.name: [_encode(t, dict(r)) for r in conn.execute(select(t)).mappings().all()]
                          for t in Base.metadata.sorted_tables}
        finally:
            engine.dispose()
    return {"revision": revision, "tables": tables}


async def import_rows(db: Database, export: dict[str, Any]) -> int:
    """Load an export into an empty database at the export's schema revision, then migrate to head."""
    from cs.db import migrations

    revision = export.get("revision")
    await migrations.upgrade(db, revision or "head")
    async with db.read() as session:
        if await meta.is_initialised(session):
            raise errors.ConfigError(f"the database {db!r} is already initialised; restore into an empty one")
    count = 0
    async with db.write() as session:
        for table in Base.metadata.sorted_tables:
            rows = [_decode(table, r) for r in export["tables"].get(table.name, [])]
            if rows:
                await session.execute(insert(table), rows)
                count += len(rows)
    await db.upgrade()
    if not db.is_sqlite:
        await _reset_sequences(db)
    return count


async def _reset_sequences(db: Database) -> None:
    """PostgreSQL: move serial columns' sequences past the restored ids."""
    async with db.write() as session:
        for table in Base.metadata.sorted_tables:
            pk = list(table.primary_key.columns)
            if len(pk) != 1 or not isinstance(pk[0].type, Integer):
                continue
            name, col = table.name, pk[0].name  # from the models, not from input
            await session.execute(text(
                f"SELECT setval(seq, COALESCE((SELECT MAX({col}) FROM {name}), 0) + 1, false) "
                f"FROM (SELECT pg_get_serial_sequence('{name}', '{col}') AS seq) s WHERE seq IS NOT NULL"))


# ------------------------------------------------------------------ the archive's content


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            info.mode = 0o600 if name in SECRET_NAMES else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _untar(data: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for info in tar:
                if not info.isfile() or info.name.startswith("/") or ".." in Path(info.name).parts:
                    raise errors.BadRequest(f"unexpected member {info.name!r} in the backup archive")
                fh = tar.extractfile(info)
                out[info.name] = fh.read() if fh is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise errors.BadRequest(f"the backup archive's content is damaged: {exc}") from exc
    return out


def _identity_members(layout: Layout) -> Iterator[tuple[str, Path]]:
    yield "ca/key.pem", layout.ca_key
    yield "ca/cert.pem", layout.ca_cert
    for prefix, files in (("identity", layout.identity), ("admin", layout.admin)):
        for path in (files.key, files.cert, files.ca, files.meta):
            yield f"{prefix}/{path.name}", path


def _read_files(layout: Layout) -> dict[str, bytes]:
    members = {}
    for name, path in _identity_members(layout):
        try:
            members[name] = path.read_bytes()
        except OSError as exc:
            raise errors.ConfigError(f"{layout.data_dir} is not an initialised CS: {exc.strerror} ({name})") from exc
    if layout.passphrase_file.exists():
        members["passphrase.txt"] = layout.passphrase_file.read_bytes()
    if (layout.data_dir / accounts.KEY_FILE).exists():  # the account store's key: without it, no password
        members[accounts.KEY_FILE] = (layout.data_dir / accounts.KEY_FILE).read_bytes()
    return members


async def build(cfg: CSConfig) -> tuple[bytes, dict[str, Any]]:
    """The archive's plaintext (a tar.gz) for the CS of ``cfg``, and its manifest."""
    layout = Layout(cfg.data_dir)
    url = cfg.database_url()
    db = Database(url)
    try:
        counts: dict[str, int]
        if db.is_sqlite:
            db_bytes = await asyncio.to_thread(sqlite_snapshot, url)
            members = {"db.sqlite": db_bytes}
            counts = {k: len(v) for k, v in (await asyncio.to_thread(rows_of_sqlite_file, db_bytes))["tables"].items()}
        else:
            export = await export_rows(db)
            members = {"db.json": json.dumps(export).encode()}
            counts = {k: len(v) for k, v in export["tables"].items()}
    finally:
        await db.close()
    members.update(await asyncio.to_thread(_read_files, layout))
    manifest = {"format": FORMAT, "created_ns": time.time_ns(), "engine": db.engine_name, "rows": counts,
                "members": sorted(members)}
    members["manifest.json"] = json.dumps(manifest, indent=2).encode()
    return await asyncio.to_thread(_tar, members), manifest


async def backup(cfg: CSConfig, out: Path, password: Password) -> dict[str, Any]:
    """Write the encrypted archive to ``out`` (0600, durable); returns the manifest."""
    plain, manifest = await build(cfg)

    def write() -> None:
        buf = io.BytesIO()
        seal(plain, password, buf)
        tls.write_private(out, buf.getvalue())

    await asyncio.to_thread(write)
    log.info("cs_backed_up", out=str(out), engine=manifest["engine"], rows=sum(manifest["rows"].values()))
    return manifest


async def restore(archive: Path, cfg: CSConfig, password: Password) -> dict[str, Any]:
    """Restore an archive into the fresh data dir (and database) of ``cfg``; returns the manifest."""
    layout = Layout(cfg.data_dir)
    if layout.any_exists():
        raise errors.ConfigError(f"{cfg.data_dir} already holds a CS; restore into a fresh data dir")
    try:
        raw = await asyncio.to_thread(archive.read_bytes)
    except OSError as exc:
        raise errors.ConfigError(f"cannot read {archive}: {exc.strerror}") from exc
    plain = await asyncio.to_thread(lambda: open_sealed(io.BytesIO(raw), password))
    members = _untar(plain)
    try:
        manifest = json.loads(members["manifest.json"])
    except (KeyError, ValueError) as exc:
        raise errors.BadRequest("the backup archive has no manifest") from exc
    missing = [name for name, _ in _identity_members(layout) if name not in members]
    if missing or not ({"db.sqlite", "db.json"} & set(members)):
        raise errors.BadRequest(f"the backup archive is incomplete: missing {missing or 'the database'}")
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    await _restore_database(cfg, members)
    await asyncio.to_thread(_write_files, layout, members)
    log.info("cs_restored", data_dir=str(cfg.data_dir), engine=manifest.get("engine"))
    return dict(manifest)


async def _restore_database(cfg: CSConfig, members: dict[str, bytes]) -> None:
    url = cfg.database_url()
    db = Database(url)
    try:
        if db.is_sqlite and "db.sqlite" in members:
            path = _sqlite_path(url)
            if path.exists():
                raise errors.ConfigError(f"{path} exists; restore into a fresh database")
            await asyncio.to_thread(tls.write_private, path, members["db.sqlite"])
            await db.upgrade()
            return
        export = (json.loads(members["db.json"]) if "db.json" in members
                  else await asyncio.to_thread(rows_of_sqlite_file, members["db.sqlite"]))
        await import_rows(db, export)
    finally:
        await db.close()


def _write_files(layout: Layout, members: dict[str, bytes]) -> None:
    for directory in (layout.ca_dir, layout.identity.directory, layout.admin.directory):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
    for name, path in _identity_members(layout):
        if name.endswith("key.pem"):
            tls.write_private(path, members[name])
        else:
            tls.durable_write(path, members[name])
    if "passphrase.txt" in members:
        tls.write_private(layout.passphrase_file, members["passphrase.txt"])
    if accounts.KEY_FILE in members:
        tls.write_private(layout.data_dir / accounts.KEY_FILE, members[accounts.KEY_FILE])
