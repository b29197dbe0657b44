"""Which component certificates the CS still honours: revocation and passphrase epochs.

Every certificate the CS issues to a component is recorded (:class:`~cs.db.models_access.Certificate`)
with the passphrase epoch it was issued under. Two kinds of serial are refused:

- **revoked** (``drlab cs revoke``): refused by the CS at once (401 ``certificate_revoked``) and,
  through the ``revoked_serials`` of their settings documents, by every PS and MT. A revoked
  component may come back only by registering again with the passphrase (a new key and serial;
  it keeps its component id and its disks). It never does so by itself.
- **stale** (issued under an older passphrase epoch, i.e. before ``drlab cs passphrase rotate``):
  refused by the CS only, with 401 ``reregister_required``; the component re-registers from its
  passphrase file. PS and MT keep accepting them, so replication keeps running meanwhile.

Serials past their expiry are left out: TLS refuses those already. The sets live in a small
in-memory cache (the auth middleware is synchronous) that a revocation in this process updates
at once and that every CS process re-reads every ``revocation_refresh_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors, http
from common import logging as dlog
from cs.db import meta
from cs.db.engine import Database
from cs.db.models import Component
from cs.db.models_access import Certificate
from cs.state import CSState

log = dlog.get("drlab.cs.revocation")

PASSPHRASE_EPOCH = "passphrase_epoch"


async def current_epoch(session: AsyncSession) -> int:
    return int(await meta.get(session, PASSPHRASE_EPOCH) or 0)


async def record(session: AsyncSession, *, serial: str, component_id: str, expires_ns: int, epoch: int) -> None:
    """Remember a certificate just issued to a component (and forget its expired ones: TLS
    refuses those anyway)."""
    await session.execute(delete(Certificate).where(Certificate.component_id == component_id,
                                                    Certificate.expires_ns < time.time_ns()))
    session.add(Certificate(serial=serial, component_id=component_id, issued_ns=time.time_ns(),
                            expires_ns=expires_ns, epoch=epoch, revoked_ns=None))
    await session.flush()


async def epoch_of(session: AsyncSession, serial: int) -> int:
    """The passphrase epoch a certificate was issued under (the current one if it is unknown)."""
    row = await session.get(Certificate, format(serial, "x"))
    return row.epoch if row is not None else await current_epoch(session)


STATES = ("registered", "reregister_required", "revoked")


async def states_of(session: AsyncSession, comps: Iterable[Component]) -> dict[str, str]:
    """Each component's registration state by its current certificate: ``revoked``,
    ``reregister_required`` (issued under a passphrase since rotated) or ``registered``."""
    comps = list(comps)
    serials = [c.cert_serial for c in comps if c.cert_serial]
    rows = {r.serial: r for r in (await session.scalars(
        select(Certificate).where(Certificate.serial.in_(serials)))).all()} if serials else {}
    epoch = await current_epoch(session)
    out = {}
    for comp in comps:
        cert = rows.get(comp.cert_serial)
        out[comp.component_id] = ("revoked" if cert is not None and cert.revoked_ns is not None else
                                  "reregister_required" if cert is not None and cert.epoch < epoch else "registered")
    return out


async def revoked_serials(session: AsyncSession, now_ns: int | None = None) -> list[str]:
    """Unexpired revoked serials, as decimal strings (what PS and MT settings documents carry)."""
    now = time.time_ns() if now_ns is None else now_ns
    rows = await session.scalars(select(Certificate.serial).where(
        Certificate.revoked_ns.is_not(None), Certificate.expires_ns > now).order_by(Certificate.serial))
    return [str(int(s, 16)) for s in rows.all()]


async def _refused(session: AsyncSession) -> tuple[frozenset[int], frozenset[int]]:
    now, epoch = time.time_ns(), await current_epoch(session)
    rows = (await session.execute(select(Certificate.serial, Certificate.revoked_ns, Certificate.epoch).where(
        Certificate.expires_ns > now, or_(Certificate.revoked_ns.is_not(None), Certificate.epoch < epoch)))).all()
    revoked = frozenset(int(s, 16) for s, r, _ in rows if r is not None)
    stale = frozenset(int(s, 16) for s, r, e in rows if r is None and e < epoch)
    return revoked, stale


@dataclass
class RefusedSerials:
    """The cache the CS's middleware consults on every request."""

    revoked: frozenset[int] = frozenset()
    stale: frozenset[int] = frozenset()
    loaded: asyncio.Event = field(default_factory=asyncio.Event)

    async def refresh(self, db: Database) -> None:
        async with db.read() as session:
            self.revoked, self.stale = await _refused(session)
        self.loaded.set()

    def check(self, serial: int) -> None:
        if serial in self.revoked:
            raise errors.Unauthorized("this certificate has been revoked; register again with the passphrase",
                                      code="certificate_revoked")
        if serial in self.stale:
            raise errors.Unauthorized("the passphrase changed: register again with the new passphrase",
                                      code="reregister_required")


REFUSED = web.AppKey("refused_serials", RefusedSerials)


def refused_of(request: web.Request) -> RefusedSerials:
    return request.app[REFUSED]


@web.middleware
async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
    """After the auth middleware: refuse revoked and stale component certificates."""
    ident = request.get(http.IDENTITY)  # type: ignore[call-overload]
    if ident is not None and ident.role in ("ps", "mt", "agent"):
        refused = request.app[REFUSED]
        if not refused.loaded.is_set():
            raise errors.Unavailable("the CS is starting", retry_after_s=1.0)
        refused.check(ident.serial)
    return await handler(request)


def install(app: web.Application, state: CSState) -> None:
    """Add the cache, its refresh task and the middleware to the CS app (before it starts)."""
    refused = RefusedSerials()
    app[REFUSED] = refused
    app.middlewares.append(middleware)

    async def refresher(_app: web.Application) -> AsyncIterator[None]:
        await refused.refresh(state.db)
        task = asyncio.create_task(_refresh_loop(refused, state), name="revocation-refresh")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(refresher)


async def _refresh_loop(refused: RefusedSerials, state: CSState) -> None:
    while True:
        await asyncio.sleep(state.cfg.revocation_refresh_s)
        try:
            await refused.refresh(state.db)
        except Exception as exc:  # the database is down for a moment: keep the last sets
            log.warning("revocation_refresh_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")


async def revoke_component(state: CSState, component_id: str) -> list[str]:
    """Revoke every unexpired certificate of a component (hex serials); bumps the settings version
    so every PS and MT learns them."""
    now = time.time_ns()
    async with state.change() as session:
        comp = await session.get(Component, component_id)
        if comp is None:
            raise errors.NotFound(f"no component {component_id}")
        if comp.role not in ("ps", "mt", "agent"):
            raise errors.BadRequest(f"a {comp.role} certificate is not revoked this way")
        serials = await revoke_in(session, comp, now)
    log.info("component_revoked", component_id=component_id, role=comp.role, serials=len(serials))
    return serials


async def revoke_in(session: AsyncSession, comp: Component, now: int) -> list[str]:
    """Revoke every unexpired certificate of ``comp`` in the caller's write transaction (hex serials);
    the rows outlive the component's, so a removed component stays refused."""
    certs = list((await session.scalars(select(Certificate).where(
        Certificate.component_id == comp.component_id, Certificate.expires_ns > now))).all())
    if comp.cert_serial and comp.cert_serial not in {c.serial for c in certs}:
        row = await session.get(Certificate, comp.cert_serial)
        if row is None:  # issued before certificates were recorded: keep it revoked for a year
            row = Certificate(serial=comp.cert_serial, component_id=comp.component_id, issued_ns=comp.registered_at,
                              expires_ns=now + 366 * 86400 * 10**9, epoch=0, revoked_ns=None)
            session.add(row)
        certs.append(row)
    for cert in certs:
        cert.revoked_ns = cert.revoked_ns or now
    return sorted(c.serial for c in certs)
