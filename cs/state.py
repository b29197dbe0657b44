"""What every CS request handler shares: config, database, CA and the settings watch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from common.config import CSConfig
from cs import audit  # noqa: F401  (installs the audit hook on every session)
from cs.ca import CA
from cs.db import meta
from cs.db.engine import Database
from cs.notify import VersionWatch


@dataclass
class CSState:
    cfg: CSConfig
    db: Database
    ca: CA
    watch: VersionWatch

    def __repr__(self) -> str:
        return f"CSState({self.cfg.data_dir})"

    @classmethod
    def open(cls, cfg: CSConfig, db: Database, ca: CA, *, recheck_s: float = 1.0) -> CSState:
        async def read_version() -> int:
            async with db.read() as session:
                return await meta.settings_version(session)

        return cls(cfg=cfg, db=db, ca=ca, watch=VersionWatch(read_version, recheck_s=recheck_s))

    @asynccontextmanager
    async def change(self) -> AsyncIterator[AsyncSession]:
        """A write transaction that changes what settings documents show: it bumps the
        settings version and, once committed, wakes the long-polls."""
        async with self.db.write() as session:
            yield session
            await meta.bump_version(session)
        await self.watch.changed()


STATE = web.AppKey("cs_state", CSState)


def state_of(request: web.Request) -> CSState:
    return request.app[STATE]
