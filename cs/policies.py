"""Replication policies: RPO threshold, retention window, consistency intervals, multi-machine consistency,
and what the MT does when its retention volume runs low (``low_space_action``: ``prune`` the oldest
points even inside the window, or ``pause`` applying and raise an alert; mt/retention.py).

As in the emulated product (REFERENCE.md): the RPO threshold only raises alerts, retention is up
to 15 days, app-consistent points every 1 to 12 hours (0: none; the lab may go down to a minute),
crash-consistent points every 5 minutes unless the policy says otherwise. A ``default`` policy
exists from the first start of the CS; protecting a machine without naming one uses it. A policy
applies to machines (``machines.policy_name``) and to replication groups (``policy_name``); one
in use, and the default, cannot be deleted.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import model
from cs.db.models import Machine, Policy, ReplicationGroup

log = dlog.get("drlab.cs.policies")

DEFAULT = "default"
DAY_S = 86_400
DEFAULTS: dict[str, Any] = {"rpo_threshold_s": 3600, "retention_window_s": DAY_S, "app_consistent_interval_s": 4 * 3600,
                            "crash_consistent_interval_s": None, "multi_machine_consistency": False,
                            "low_space_action": "prune"}
# field: (low, high); app_consistent 0 means off; an RPO threshold of a few seconds suits sub-second RPO
BOUNDS = {"rpo_threshold_s": (1, 7 * DAY_S), "retention_window_s": (60, 15 * DAY_S),
          "app_consistent_interval_s": (60, 12 * 3600), "crash_consistent_interval_s": (1, 3600)}
LOW_SPACE_ACTIONS = ("prune", "pause")
FIELDS = (*BOUNDS, "multi_machine_consistency", "low_space_action")


def _int(body: dict[str, Any], field: str) -> int:
    value = body[field]
    low, high = BOUNDS[field]
    ok = isinstance(value, int) and not isinstance(value, bool) and (low <= value <= high or (
        value == 0 and field == "app_consistent_interval_s"))
    if not ok:
        extra = " (or 0: none)" if field == "app_consistent_interval_s" else ""
        raise errors.BadRequest(f"{field} must be an integer number of seconds in [{low}, {high}]{extra}")
    return int(value)


def parse(body: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The policy's fields from a create body (``current`` None: defaults fill the gaps) or an
    update body (only the given fields change); checks each field and their relations (pure)."""
    model.body_keys(body, allowed=FIELDS if current is not None else ("name", *FIELDS))
    values = dict(DEFAULTS if current is None else current)
    for field in BOUNDS:
        if field in body:
            values[field] = None if (field == "crash_consistent_interval_s" and body[field] is None) \
                else _int(body, field)
    if "multi_machine_consistency" in body:
        if not isinstance(body["multi_machine_consistency"], bool):
            raise errors.BadRequest("multi_machine_consistency must be true or false")
        values["multi_machine_consistency"] = body["multi_machine_consistency"]
    if "low_space_action" in body:
        if body["low_space_action"] not in LOW_SPACE_ACTIONS:
            raise errors.BadRequest(f"low_space_action must be one of {', '.join(LOW_SPACE_ACTIONS)}")
        values["low_space_action"] = body["low_space_action"]
    check(values)
    return values


def check(values: dict[str, Any]) -> None:
    """The relations between fields: points must fit in the retention window."""
    window = values["retention_window_s"]
    if values["app_consistent_interval_s"] > window:
        raise errors.BadRequest("app_consistent_interval_s must not exceed retention_window_s")
    crash = values["crash_consistent_interval_s"]
    if crash is not None and crash > window:
        raise errors.BadRequest("crash_consistent_interval_s must not exceed retention_window_s")


def view(policy: Policy, machines: int = 0, groups: int = 0) -> dict[str, Any]:
    return {"name": policy.name, **{f: getattr(policy, f) for f in FIELDS}, "machines": machines,
            "groups": groups, "created_ns": policy.created_ns, "updated_ns": policy.updated_ns}


def values_of(policy: Policy) -> dict[str, Any]:
    return {f: getattr(policy, f) for f in FIELDS}


async def ensure_default(session: AsyncSession) -> None:
    """Create the ``default`` policy if missing (at every start; idempotent)."""
    if await session.get(Policy, DEFAULT) is None:
        now = time.time_ns()
        session.add(Policy(name=DEFAULT, created_ns=now, updated_ns=now, **DEFAULTS))
        await session.flush()
        log.info("policy_default_created", **DEFAULTS)


async def usage(session: AsyncSession, name: str) -> tuple[int, int]:
    """(machines, replication groups) under the policy."""
    machines = await session.scalar(select(func.count()).select_from(Machine).where(Machine.policy_name == name))
    groups = await session.scalar(select(func.count()).select_from(ReplicationGroup)
                                  .where(ReplicationGroup.policy_name == name))
    return int(machines or 0), int(groups or 0)


async def create(session: AsyncSession, name: str, values: dict[str, Any]) -> Policy:
    now = time.time_ns()
    policy = Policy(name=name, created_ns=now, updated_ns=now, **values)
    await model.create_new(session, policy, name, "policy")
    return policy


async def update(session: AsyncSession, name: str, body: dict[str, Any]) -> Policy:
    policy = await model.get_or_404(session, Policy, name, "policy", for_update=True)
    values = parse(body, values_of(policy))
    for field, value in values.items():
        setattr(policy, field, value)
    policy.updated_ns = time.time_ns()
    return policy


async def delete(session: AsyncSession, name: str) -> None:
    if name == DEFAULT:
        raise errors.Conflict("the default policy cannot be deleted")
    policy = await model.get_or_404(session, Policy, name, "policy", for_update=True)
    machines, groups = await usage(session, name)
    if machines or groups:
        raise errors.Conflict(f"policy {name} is in use by {machines} machine(s) and {groups} group(s)")
    await session.delete(policy)


async def resolve(session: AsyncSession, name: str | None) -> Policy:
    """The named policy (404), or the default one."""
    return await model.get_or_404(session, Policy, name or DEFAULT, "policy")


async def assign_groups(session: AsyncSession, name: str, groups: list[str]) -> None:
    """Put replication groups under the policy (404 for an unknown group)."""
    await model.get_or_404(session, Policy, name, "policy")
    for group_name in groups:
        group = await session.get(ReplicationGroup, group_name)
        if group is None:
            raise errors.NotFound(f"no replication group {group_name}")
        group.policy_name = name
