"""Machines and protected items: a machine (its agent's component id) under a replication policy.

A ``machines`` row exists from the first protect of the machine (or its assignment to a site);
until then the machine is known from its agent alone and shows as ``unprotected``. The protected
item is the machine row's ``policy_name`` and ``protection_state`` (no table of its own).

``protection_state`` is the machine's state of ARCHITECTURE.md §6, kept from its disks' states by
:func:`machine_state` (pure): a session hook recomputes it whenever a flush changes the state of
one of its disks, so no code that moves a disk can leave the machine behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import event, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from common import errors
from common import logging as dlog
from cs import failover_props, policies
from cs.db import repo
from cs.db.models import Component, Disk, Machine, Policy

log = dlog.get("drlab.cs.protection")

# A machine shows the state of its disk that needs attention first (earlier in this list).
STATE_RANK = ("resync-required", "failover-in-progress", "failback", "reprotecting", "enabling",
              "initial-replication", "resyncing", "resync", "failed-over", "committed", "failed-back",
              "protected", "unprotected")


def machine_state(disk_states: Iterable[str]) -> str:
    """A machine's state from its disks' (pure): ``unprotected`` without disks."""
    states = set(disk_states)
    if not states:
        return "unprotected"
    if len(states) == 1:
        return states.pop()
    return min(states, key=lambda s: STATE_RANK.index(s) if s in STATE_RANK else -1)


def machine_view(agent: Component, row: Machine | None, disks: Sequence[Disk]) -> dict[str, Any]:
    return {"machine_id": agent.component_id, "name": row.name if row else agent.host_id,
            "host_id": agent.host_id, "site": row.site_name if row else agent.site_name,
            "policy": row.policy_name if row else None,
            "protection_state": row.protection_state if row else machine_state(d.state for d in disks),
            "protected_ns": row.protected_ns if row else None,
            "disks": [{"disk_id": d.disk_id, "name": d.name, "state": d.state, "ps_id": d.ps_id, "mt_id": d.mt_id}
                      for d in disks]}


async def agent_or_404(session: AsyncSession, machine_id: str) -> Component:
    agent = await session.get(Component, machine_id)
    if agent is None or agent.role != "agent":
        raise errors.NotFound(f"no machine {machine_id}")
    return agent


async def ensure(session: AsyncSession, agent: Component) -> Machine:
    """The machine's row, created from its agent if missing."""
    row = await session.get(Machine, agent.component_id)
    if row is None:
        now = time.time_ns()
        row = Machine(machine_id=agent.component_id, name=agent.host_id[:255], site_name=agent.site_name,
                      policy_name=None, protection_state="unprotected", protected_ns=None, created_ns=now,
                      updated_ns=now)
        session.add(row)
    return row


async def on_protect(session: AsyncSession, agent: Component, policy_name: str | None) -> Machine:
    """Put the machine under ``policy_name`` (default: the policy it is under already, else the
    default policy) in the protect transaction (protecting a new disk keeps the machine's policy)."""
    if policy_name is None:
        current = await session.get(Machine, agent.component_id)
        policy_name = current.policy_name if current is not None else None
    policy = await policies.resolve(session, policy_name)
    state = machine_state(d.state for d in await repo.disks(session, machine_id=agent.component_id))
    row = await ensure(session, agent)  # no query after this: one audit row for a new machine
    row.policy_name, row.protection_state, row.updated_ns = policy.name, state, time.time_ns()
    row.protected_ns = row.protected_ns or row.updated_ns
    log.info("machine_protected", machine_id=agent.component_id, policy=policy.name)
    return row


async def set_policy(session: AsyncSession, policy_name: str, machine_ids: list[str]) -> None:
    """Move protected machines to another policy (404 unknown, 409 for a machine never protected)."""
    policy = await session.get(Policy, policy_name)
    if policy is None:
        raise errors.NotFound(f"no policy {policy_name}")
    for machine_id in machine_ids:
        row = await session.get(Machine, machine_id)
        if row is None or row.policy_name is None:
            raise errors.Conflict(f"machine {machine_id} is not protected")
        row.policy_name, row.updated_ns = policy_name, time.time_ns()


async def listing(session: AsyncSession, *, limit: int, after: str | None = None, site: str | None = None,
                  policy: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of machines in id order (those after ``after``): (views, the last id if more follow)."""
    agents = sorted(await repo.components(session, "agent"), key=lambda a: a.component_id)
    rows = {m.machine_id: m for m in (await session.scalars(select(Machine))).all()}
    disks: dict[str, list[Disk]] = {}
    for disk in await repo.disks(session):
        disks.setdefault(disk.machine_id, []).append(disk)
    views = [machine_view(a, rows.get(a.component_id), disks.get(a.component_id, [])) for a in agents
             if after is None or a.component_id > after]
    views = [v for v in views if (site is None or v["site"] == site) and (policy is None or v["policy"] == policy)]
    return views[:limit], views[limit - 1]["machine_id"] if len(views) > limit else None


async def get(session: AsyncSession, machine_id: str) -> dict[str, Any]:
    """One machine's view, with its failover properties (cs/failover_props.py)."""
    agent = await agent_or_404(session, machine_id)
    view = machine_view(agent, await session.get(Machine, machine_id),
                        await repo.disks(session, machine_id=machine_id))
    return {**view, "failover_properties": await failover_props.read(session, machine_id)}


async def rename(session: AsyncSession, machine_id: str, name: str) -> None:
    row = await ensure(session, await agent_or_404(session, machine_id))
    row.name, row.updated_ns = name, time.time_ns()


# -- the hook: machine state follows disk states ---------------------------------------------

def _moved_machines(session: Session) -> set[str]:
    out = set()
    for obj in (*session.new, *session.dirty):
        if isinstance(obj, Disk) and (obj in session.new or inspect(obj).attrs["state"].history.has_changes()):
            out.add(obj.machine_id)
    return out


@event.listens_for(Session, "before_flush")
def _follow_disks(session: Session, _ctx: Any, _instances: Any) -> None:
    machine_ids = _moved_machines(session)
    if not machine_ids:
        return
    with session.no_autoflush:
        for machine_id in machine_ids:
            row = session.get(Machine, machine_id)
            if row is None:
                continue
            disks = {d.disk_id: d for d in session.scalars(select(Disk).where(Disk.machine_id == machine_id))}
            disks.update({d.disk_id: d for d in session.new if isinstance(d, Disk) and d.machine_id == machine_id})
            new_state = machine_state(d.state for d in disks.values() if d not in session.deleted)
            if new_state != row.protection_state:
                row.protection_state, row.updated_ns = new_state, time.time_ns()
