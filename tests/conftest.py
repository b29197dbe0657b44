"""Fixtures shared by every test package.

- ``seed``: a random seed per test, printed (and shown in the report of a failing test);
  ``DRLAB_SEED=<int>`` replays one.
- ``cs_env``: a real configuration server (``init_cs`` + ``CSService``) on 127.0.0.1, port 0,
  real TLS, in the test's tmp dir; see :class:`CSEnv`. ``cs_factory`` starts more of them,
  with config overrides (e.g. ``challenge_ttl_s=0.2``).
- ``cs_engine``: the CS database engine, ``sqlite`` or ``postgresql``: every test under tests/cs
  that uses a CS fixture runs on both (ids ``[sqlite]`` / ``[postgresql]``), elsewhere SQLite.
  ``new_db_url()`` gives each CS its own fresh database on the session's throwaway PostgreSQL
  (tests/pgserver.py, started only when a test asks for it; no PostgreSQL fails those tests).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import text

from common import auth, tls
from common.config import CSConfig
from cs.client import CSAdminClient
from cs.db.engine import Database
from cs.db.models import Base
from cs.init import init_cs
from cs.service import CSService
from tests.pgserver import PGServer, PGUnavailable

# ---------------------------------------------------------------------------- seeds


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The test's random seed: ``DRLAB_SEED`` if set, else a fresh one. It is printed, shown in the
    report of a failing test, and seeds the ``random`` module."""
    env = os.environ.get("DRLAB_SEED")
    value = int(env) if env else random.SystemRandom().randrange(2**32)
    print(f"\n{request.node.nodeid}: DRLAB_SEED={value}")
    request.node.user_properties.append(("DRLAB_SEED", value))
    random.seed(value)
    return value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    seeds = [v for k, v in item.user_properties if k == "DRLAB_SEED"]
    if seeds and report.failed:
        report.sections.append(("seed", f"replay with DRLAB_SEED={seeds[-1]}"))


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that runs ``drlab`` in-process reconfigures logging (common/logging.setup): put the
    root logger and structlog back afterwards, so later tests see the usual log output."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    if root.handlers != handlers or root.level != level:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


# ---------------------------------------------------------------------------- the CS


@dataclass
class CSEnv:
    """A running CS: its URL, passphrase (file 0600), admin client and identities."""

    url: str
    passphrase: auth.Passphrase
    passphrase_file: Path
    admin: CSAdminClient
    admin_files: tls.IdentityFiles
    data_dir: Path
    service: CSService
    cfg: CSConfig


def cs_config(data_dir: Path, **overrides: object) -> CSConfig:
    """A CS config for tests: loopback, port 0, short timeouts."""
    values: dict[str, object] = {"data_dir": data_dir, "listen_host": "127.0.0.1", "port": 0,
                                 "long_poll_max_s": 5.0, "challenge_ttl_s": 30.0}
    values.update(overrides)
    return CSConfig(**values)  # type: ignore[arg-type]


async def start_cs(data_dir: Path, *, recheck_s: float = 0.5, **overrides: object) -> CSEnv:
    """init_cs + CSService.start; ``recheck_s`` is how often long-polls re-read the DB version."""
    cfg = cs_config(data_dir, **overrides)
    passphrase = await init_cs(cfg, hosts=["127.0.0.1", "localhost"])
    service = CSService(cfg, recheck_s=recheck_s)
    await service.start()
    admin_files = tls.IdentityFiles(cfg.data_dir / "admin")
    admin = CSAdminClient(service.url, admin_files, timeout_s=15.0)
    return CSEnv(url=service.url, passphrase=passphrase, passphrase_file=cfg.data_dir / "passphrase.txt",
                 admin=admin, admin_files=admin_files, data_dir=cfg.data_dir, service=service, cfg=cfg)


async def stored_bytes(env: CSEnv) -> bytes:
    """What the CS's database holds, to look for secrets in: the SQLite files, or on PostgreSQL every
    row of every table as text."""
    if not env.cfg.db_url:
        files = [p for p in env.data_dir.iterdir() if p.name.startswith("cs.db")]
        assert files, "no SQLite file"
        return b"".join(p.read_bytes() for p in files)
    db = Database(env.cfg.db_url)
    try:
        async with db.read() as session:
            rows = [row for table in Base.metadata.tables
                    for row in (await session.execute(text(f'SELECT t::text FROM "{table}" t'))).scalars()]
    finally:
        await db.close()
    return "\n".join(rows).encode()


async def stop_cs(env: CSEnv) -> None:
    await env.admin.close()
    await env.service.stop()


# ---------------------------------------------------------------------------- database engines

DB_ENGINES = ("sqlite", "postgresql")
BOTH_ENGINES_UNDER = Path(__file__).resolve().parent / "cs"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests of tests/cs that use a CS (or ask for ``cs_engine``) on both engines."""
    if "cs_engine" not in metafunc.fixturenames or BOTH_ENGINES_UNDER not in metafunc.definition.path.parents:
        return
    if not any("cs_engine" in m.args for m in metafunc.definition.iter_markers("parametrize")):
        metafunc.parametrize("cs_engine", DB_ENGINES, indirect=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PGServer]:
    """The session's throwaway PostgreSQL; failing to start it FAILS the tests that need it."""
    reason = ""
    try:
        server = PGServer()
        server.start()
    except PGUnavailable as exc:
        reason = str(exc)
    if reason:
        pytest.fail(f"the [postgresql] tests need PostgreSQL: {reason}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cs_engine(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


NewDbUrl = Callable[..., Awaitable[str]]


@pytest.fixture
async def new_db_url(cs_engine: str, request: pytest.FixtureRequest) -> AsyncIterator[NewDbUrl]:
    """``await new_db_url(empty=False)``: a CSConfig.db_url for one more CS: "" (SQLite in its data
    dir) or a PostgreSQL database of its own without rows (``empty``: without tables either),
    emptied after the test for another one."""
    server: PGServer | None = request.getfixturevalue("pg_server") if cs_engine == "postgresql" else None
    used: list[str] = []

    async def make(*, empty: bool = False) -> str:
        if server is None:
            return ""
        used.append(await server.database(empty=empty))
        return server.url(used[-1])

    try:
        yield make
    finally:
        for name in used:
            assert server is not None
            await server.recycle(name)


@pytest.fixture
async def cs_env(tmp_path: Path, new_db_url: NewDbUrl) -> AsyncIterator[CSEnv]:
    env = await start_cs(tmp_path / "cs", db_url=await new_db_url())
    try:
        yield env
    finally:
        await stop_cs(env)


CSFactory = Callable[..., Awaitable[CSEnv]]


@pytest.fixture
async def cs_factory(tmp_path: Path, new_db_url: NewDbUrl) -> AsyncIterator[CSFactory]:
    """``await cs_factory(recheck_s=..., **CSConfig overrides)``: more CS instances, each in its own dir."""
    started: list[CSEnv] = []

    async def make(**overrides: Any) -> CSEnv:
        overrides.setdefault("db_url", await new_db_url())
        env = await start_cs(tmp_path / f"cs-factory-{len(started)}", **overrides)
        started.append(env)
        return env

    try:
        yield make
    finally:
        for env in reversed(started):
            await stop_cs(env)
