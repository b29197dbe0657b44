"""Fixtures shared by every test package.

- ``seed``: a random seed per test, printed (and shown in the report of a failing test);
  ``DRLAB_SEED=<int>`` replays one.
- ``cs_env``: a real configuration server (``init_cs`` + ``CSService``) on 127.0.0.1, port 0,
  real TLS, in the test's tmp dir; see :class:`CSEnv`. ``cs_factory`` starts more of them,
  with config overrides (e.g. ``challenge_ttl_s=0.2``).
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common import auth, tls
from common.config import CSConfig
from cs.client import CSAdminClient
from cs.init import init_cs
from cs.service import CSService

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


async def stop_cs(env: CSEnv) -> None:
    await env.admin.close()
    await env.service.stop()


@pytest.fixture
async def cs_env(tmp_path: Path) -> AsyncIterator[CSEnv]:
    env = await start_cs(tmp_path / "cs")
    try:
        yield env
    finally:
        await stop_cs(env)


CSFactory = Callable[..., Awaitable[CSEnv]]


@pytest.fixture
async def cs_factory(tmp_path: Path) -> AsyncIterator[CSFactory]:
    """``await cs_factory(recheck_s=..., **CSConfig overrides)``: more CS instances, each in its own dir."""
    started: list[CSEnv] = []

    async def make(**overrides: Any) -> CSEnv:
        env = await start_cs(tmp_path / f"cs-factory-{len(started)}", **overrides)
        started.append(env)
        return env

    try:
        yield make
    finally:
        for env in reversed(started):
            await stop_cs(env)
