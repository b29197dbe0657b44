"""Queries on components, challenges, disks and jobs (each takes an open session)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cs.db.models import Component, Disk, Job

ACTIVE_JOB_STATES = ("queued", "running")
# the jobs an MT runs (the CS runner's kinds stay on the CS); view-* act on a failover's view (mt/jobs.py)
MT_JOB_KINDS = ("failover", "points", "view-change", "view-drop", "view-commit", "view-image")


async def component_by_host(session: AsyncSession, role: str, host_id: str) -> Component | None:
    stmt = select(Component).where(Component.role == role, Component.host_id == host_id)
    return (await session.scalars(stmt)).first()


async def components(session: AsyncSession, role: str | None = None) -> Sequence[Component]:
    stmt = select(Component).order_by(Component.registered_at, Component.component_id)
    if role is not None:
        stmt = stmt.where(Component.role == role)
    return (await session.scalars(stmt)).all()


async def components_by_id(session: AsyncSession, ids: set[str]) -> dict[str, Component]:
    if not ids:
        return {}
    rows = (await session.scalars(select(Component).where(Component.component_id.in_(ids)))).all()
    return {c.component_id: c for c in rows}


async def disks(session: AsyncSession, *, machine_id: str | None = None, ps_id: str | None = None,
                mt_id: str | None = None) -> Sequence[Disk]:
    stmt = select(Disk).order_by(Disk.machine_id, Disk.name)
    if machine_id is not None:
        stmt = stmt.where(Disk.machine_id == machine_id)
    if ps_id is not None:
        stmt = stmt.where(Disk.ps_id == ps_id)
    if mt_id is not None:
        stmt = stmt.where(Disk.mt_id == mt_id)
    return (await session.scalars(stmt)).all()


async def load_by_column(session: AsyncSession, column: str) -> dict[str, int]:
    """Number of disks assigned to each PS (``column='ps_id'``) or MT (``'mt_id'``)."""
    col = getattr(Disk, column)
    rows = await session.execute(select(col, func.count()).where(col.is_not(None)).group_by(col))
    return {str(cid): int(n) for cid, n in rows.all()}


async def active_jobs_for_mt(session: AsyncSession, mt_id: str) -> Sequence[Job]:
    stmt = (select(Job).join(Disk, Disk.disk_id == Job.disk_id)
            .where(Disk.mt_id == mt_id, Job.state.in_(ACTIVE_JOB_STATES), Job.kind.in_(MT_JOB_KINDS))
            .order_by(Job.created_ns))
    return (await session.scalars(stmt)).all()


async def active_jobs_for_disk(session: AsyncSession, disk_id: str) -> Sequence[Job]:
    stmt = select(Job).where(Job.disk_id == disk_id, Job.state.in_(ACTIVE_JOB_STATES))
    return (await session.scalars(stmt)).all()
