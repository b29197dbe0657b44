"""Sites: where components and machines are, ``on-prem`` or ``cloud``.

Each component belongs to at most one site (``components.site_name``); a machine's site is on its
row (``machines.site_name``), kept equal to its agent's. The admin assigns members explicitly; a
site with members cannot be deleted.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from cs import model, protection, validate
from cs.db.models import Component, Machine, Site

KINDS = ("on-prem", "cloud")
MAX_DESCRIPTION = 1000
MAX_MEMBERS = 1000


def parse(body: dict[str, Any], *, create: bool) -> dict[str, Any]:
    """A site's fields from a create (``name``, ``kind``, ``description?``) or update body (pure)."""
    model.body_keys(body, allowed=("name", "kind", "description") if create else ("kind", "description"),
                    required=("name", "kind") if create else ())
    out: dict[str, Any] = {}
    if create:
        out["name"] = model.name(body["name"])
    if "kind" in body:
        out["kind"] = validate.choice(body, "kind", KINDS)
    if "description" in body:
        out["description"] = model.text(body, "description", max_len=MAX_DESCRIPTION)
    return out


def parse_members(body: dict[str, Any]) -> list[str]:
    """``{"members": [component or machine id, ...]}`` (pure)."""
    model.body_keys(body, allowed=("members",), required=("members",))
    members = body["members"]
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        raise errors.BadRequest(f"members must be a list of 1 to {MAX_MEMBERS} component ids")
    return sorted({validate.hex_id(m, "a member") for m in members})


def view(site: Site, members: int = 0) -> dict[str, Any]:
    return {"name": site.name, "kind": site.kind, "description": site.description, "members": members,
            "created_ns": site.created_ns, "updated_ns": site.updated_ns}


async def member_count(session: AsyncSession, name: str) -> int:
    return int(await session.scalar(select(func.count()).select_from(Component)
                                    .where(Component.site_name == name)) or 0)


async def create(session: AsyncSession, fields: dict[str, Any]) -> Site:
    now = time.time_ns()
    site = Site(name=fields["name"], kind=fields["kind"], description=fields.get("description", ""),
                created_ns=now, updated_ns=now)
    await model.create_new(session, site, site.name, "site")
    return site


async def update(session: AsyncSession, name: str, fields: dict[str, Any]) -> Site:
    site = await model.get_or_404(session, Site, name, "site", for_update=True)
    for key, value in fields.items():
        setattr(site, key, value)
    site.updated_ns = time.time_ns()
    return site


async def delete(session: AsyncSession, name: str) -> None:
    site = await model.get_or_404(session, Site, name, "site", for_update=True)
    count = await member_count(session, name)
    if count:
        raise errors.Conflict(f"site {name} still has {count} member(s)")
    await session.delete(site)


async def assign(session: AsyncSession, name: str | None, members: list[str]) -> None:
    """Put components (and the machines of agents) in site ``name``, or in none (``None``)."""
    if name is not None:
        await model.get_or_404(session, Site, name, "site")
    comps = {c.component_id: c for c in (await session.scalars(
        select(Component).where(Component.component_id.in_(members)))).all()}
    missing = [m for m in members if m not in comps]
    if missing:
        raise errors.NotFound(f"no component {missing[0]}")
    now = time.time_ns()
    for comp in comps.values():
        comp.site_name = name
        if comp.role == "agent":
            row: Machine = await protection.ensure(session, comp)
            row.site_name, row.updated_ns = name, now


async def members(session: AsyncSession, name: str) -> list[dict[str, Any]]:
    rows = (await session.scalars(select(Component).where(Component.site_name == name)
                                  .order_by(Component.role, Component.host_id))).all()
    return [{"component_id": c.component_id, "role": c.role, "host_id": c.host_id} for c in rows]
