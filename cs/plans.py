"""Recovery plans: ordered groups of machines, each with pre and post actions (model and CRUD).

A plan fails over its groups in order, the machines of a group in parallel (ARCHITECTURE.md §6);
an action runs before (``pre``) or after (``post``) its group and is either a script (run by the
CS, with a timeout) or a manual step (the job pauses until an operator resumes it). Running plans
is a later job kind; this module keeps and checks them. A machine is in at most one group.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from cs import model, validate
from cs.db.models import Component, RecoveryPlan

MAX_GROUPS = 50
MAX_MACHINES = 500
MAX_ACTIONS = 20
MAX_SCRIPT = 4096
MAX_INSTRUCTION = 2000
MAX_DESCRIPTION = 1000
SCRIPT_TIMEOUT_S = (1, 3600)
ACTION_KINDS = ("script", "manual")


def parse_action(action: Any, where: str) -> dict[str, Any]:
    """``{"kind": "script", "name", "script", "timeout_s"?}`` or ``{"kind": "manual", "name", "instruction"}``."""
    if not isinstance(action, dict):
        raise errors.BadRequest(f"{where} must be an object")
    kind = validate.choice(action, "kind", ACTION_KINDS)
    if kind == "script":
        model.body_keys(action, allowed=("kind", "name", "script", "timeout_s"), required=("name", "script"))
        script = model.text(action, "script", max_len=MAX_SCRIPT)
        if not script.strip():
            raise errors.BadRequest(f"{where}: script must not be empty")
        low, high = SCRIPT_TIMEOUT_S
        timeout = validate.integer(action, "timeout_s", low=low, high=high) if "timeout_s" in action else 300
        return {"kind": kind, "name": model.name(action["name"], f"{where} name"), "script": script,
                "timeout_s": timeout}
    model.body_keys(action, allowed=("kind", "name", "instruction"), required=("name", "instruction"))
    return {"kind": kind, "name": model.name(action["name"], f"{where} name"),
            "instruction": model.text(action, "instruction", max_len=MAX_INSTRUCTION)}


def _actions(group: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    items = group.get(key, [])
    if not isinstance(items, list) or len(items) > MAX_ACTIONS:
        raise errors.BadRequest(f"{where}.{key} must be a list of at most {MAX_ACTIONS} actions")
    return [parse_action(a, f"{where}.{key}[{i}]") for i, a in enumerate(items)]


def parse_groups(groups: Any) -> list[dict[str, Any]]:
    """The ordered groups (pure): each ``{"machines": [id], "pre": [action], "post": [action]}``."""
    if not isinstance(groups, list) or not 1 <= len(groups) <= MAX_GROUPS:
        raise errors.BadRequest(f"groups must be a list of 1 to {MAX_GROUPS} groups")
    seen: set[str] = set()
    out = []
    for i, group in enumerate(groups):
        where = f"groups[{i}]"
        if not isinstance(group, dict):
            raise errors.BadRequest(f"{where} must be an object")
        model.body_keys(group, allowed=("machines", "pre", "post"), required=("machines",))
        machines = group["machines"]
        if not isinstance(machines, list) or not 1 <= len(machines) <= MAX_MACHINES:
            raise errors.BadRequest(f"{where}.machines must be a list of 1 to {MAX_MACHINES} machine ids")
        ids = [validate.hex_id(m, f"{where}.machines[]") for m in machines]
        twice = seen.intersection(ids) or {m for m in ids if ids.count(m) > 1}
        if twice:
            raise errors.BadRequest(f"machine {sorted(twice)[0]} is in more than one place of the plan")
        seen.update(ids)
        out.append({"machines": ids, "pre": _actions(group, "pre", where), "post": _actions(group, "post", where)})
    return out


def parse(body: dict[str, Any], *, create: bool) -> dict[str, Any]:
    model.body_keys(body, allowed=("name", "description", "groups") if create else ("description", "groups"),
                    required=("name", "groups") if create else ())
    out: dict[str, Any] = {}
    if create:
        out["name"] = model.name(body["name"])
    if "description" in body:
        out["description"] = model.text(body, "description", max_len=MAX_DESCRIPTION)
    if "groups" in body:
        out["groups"] = parse_groups(body["groups"])
    return out


def view(plan: RecoveryPlan) -> dict[str, Any]:
    return {"name": plan.name, "description": plan.description, "groups": plan.groups,
            "machines": sum(len(g["machines"]) for g in plan.groups or []),
            "created_ns": plan.created_ns, "updated_ns": plan.updated_ns}


async def _check_machines(session: AsyncSession, groups: list[dict[str, Any]]) -> None:
    ids = {m for g in groups for m in g["machines"]}
    known = set((await session.scalars(select(Component.component_id).where(
        Component.component_id.in_(ids), Component.role == "agent"))).all())
    unknown = sorted(ids - known)
    if unknown:
        raise errors.NotFound(f"no machine {unknown[0]}")


async def create(session: AsyncSession, fields: dict[str, Any]) -> RecoveryPlan:
    await _check_machines(session, fields["groups"])
    now = time.time_ns()
    plan = RecoveryPlan(name=fields["name"], description=fields.get("description", ""), groups=fields["groups"],
                        created_ns=now, updated_ns=now)
    await model.create_new(session, plan, plan.name, "recovery plan")
    return plan


async def update(session: AsyncSession, name: str, fields: dict[str, Any]) -> RecoveryPlan:
    plan = await model.get_or_404(session, RecoveryPlan, name, "recovery plan", for_update=True)
    if "groups" in fields:
        await _check_machines(session, fields["groups"])
    for key, value in fields.items():
        setattr(plan, key, value)
    plan.updated_ns = time.time_ns()
    return plan


async def delete(session: AsyncSession, name: str) -> None:
    await session.delete(await model.get_or_404(session, RecoveryPlan, name, "recovery plan", for_update=True))
