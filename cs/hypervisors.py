"""Hypervisors a PS discovers, and the inventory of machines it finds on them.

Rules:
- a hypervisor names an account of the account store (cs/accounts.py) and a registered PS; the PS
  reads it from its settings document (``hypervisors``, never a password) and fetches the
  account's credentials per discovery (:func:`credentials`, only for its own hypervisors: 403);
- ``fingerprint`` (sha256 hex of the hypervisor's TLS certificate) is pinned at the first report
  when not given; a report with another fingerprint is refused (409) and stores nothing;
- a report replaces the hypervisor's machines wholesale (rows are updated in place, so an
  unchanged inventory changes nothing but ``seen_ns``); an error report keeps the machines and
  records ``last_error``;
- every change a PS document shows (create, delete, discover now, a pinned fingerprint) bumps the
  settings version: callers run these in ``CSState.change()``.
"""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import model, validate
from cs.db.inventory import DiscoveredMachine, Hypervisor
from cs.db.models import Component, Machine
from cs.db.models_access import Account

log = dlog.get("drlab.cs.hypervisors")

FINGERPRINT = re.compile(r"^[0-9a-f]{64}\Z")
OS_KINDS = ("linux", "windows")
POWER_STATES = ("on", "off")
MAX_MACHINES = 10000
MAX_DISKS = 64
MAX_ERROR_CHARS = 1000


def fingerprint(value: Any, what: str = "fingerprint") -> str:
    """sha256 hex of a certificate: 64 hex digits, colons allowed, any case (normalised to lowercase)."""
    text = value.replace(":", "").lower() if isinstance(value, str) else ""
    if not FINGERPRINT.match(text):
        raise errors.BadRequest(f"{what} must be the sha256 of the certificate: 64 hex digits")
    return text


def parse_new(body: dict[str, Any]) -> dict[str, Any]:
    """``{name, address, port=443, account, ps_id, fingerprint?}`` (pure; 400 on anything else)."""
    model.body_keys(body, allowed=("name", "address", "port", "account", "ps_id", "fingerprint"),
                    required=("name", "address", "account", "ps_id"))
    return {"name": model.name(body["name"]), "address": validate.address(body),
            "port": validate.integer({"port": body.get("port", 443)}, "port", low=1, high=65535),
            "account": model.name(body["account"], "account"), "ps_id": validate.hex_id(body["ps_id"], "ps_id"),
            "fingerprint": fingerprint(body["fingerprint"]) if body.get("fingerprint") is not None else None}


async def require_account(session: AsyncSession, name: str) -> Account:
    account = await session.get(Account, name)
    if account is None:
        raise errors.NotFound(f"no account {name} in the account store")
    return account


async def require_ps(session: AsyncSession, ps_id: str) -> Component:
    comp = await session.get(Component, ps_id)
    if comp is None or comp.role != "ps":
        raise errors.NotFound(f"no process server {ps_id} is registered")
    return comp


async def machine_counts(session: AsyncSession, names: list[str] | None = None) -> dict[str, int]:
    stmt = select(DiscoveredMachine.hypervisor, func.count()).group_by(DiscoveredMachine.hypervisor)
    if names is not None:
        stmt = stmt.where(DiscoveredMachine.hypervisor.in_(names))
    return {str(h): int(n) for h, n in (await session.execute(stmt)).all()}


def view(hv: Hypervisor, machines: int) -> dict[str, Any]:
    """What the admin API shows of a hypervisor (the account by name only)."""
    return {"name": hv.name, "address": hv.address, "port": hv.port, "account": hv.account, "ps_id": hv.ps_id,
            "fingerprint": hv.fingerprint, "discover_seq": hv.discover_seq,
            "last_discovery_ns": hv.last_discovery_ns, "last_error": hv.last_error, "machines": machines}


async def view_of(session: AsyncSession, hv: Hypervisor) -> dict[str, Any]:
    return view(hv, (await machine_counts(session, [hv.name])).get(hv.name, 0))


async def create(session: AsyncSession, fields: dict[str, Any]) -> Hypervisor:
    """Add a hypervisor (404 for an unknown account or PS, 409 for a taken name)."""
    await require_account(session, fields["account"])
    await require_ps(session, fields["ps_id"])
    hv = Hypervisor(**fields, discover_seq=0, last_discovery_ns=None, last_error=None, created_ns=time.time_ns())
    await model.create_new(session, hv, hv.name, "hypervisor")
    log.info("hypervisor_added", name=hv.name, address=hv.address, port=hv.port, ps_id=hv.ps_id)
    return hv


async def remove(session: AsyncSession, name: str) -> None:
    """Delete a hypervisor and its discovered machines."""
    hv = await model.get_or_404(session, Hypervisor, name, "hypervisor", for_update=True)
    await session.execute(delete(DiscoveredMachine).where(DiscoveredMachine.hypervisor == name))
    await session.delete(hv)
    log.info("hypervisor_removed", name=name)


async def discover_now(session: AsyncSession, name: str) -> Hypervisor:
    hv = await model.get_or_404(session, Hypervisor, name, "hypervisor", for_update=True)
    hv.discover_seq += 1
    log.info("hypervisor_discover_requested", name=name, discover_seq=hv.discover_seq)
    return hv


# ------------------------------------------------------------------ the PS side


async def owned(session: AsyncSession, name: str, ps_id: str, *, for_update: bool = False) -> Hypervisor:
    """The hypervisor ``name`` if ``ps_id`` is its PS (404 unknown, 403 another PS's)."""
    hv = await model.get_or_404(session, Hypervisor, model.name(name, "hypervisor"), "hypervisor",
                                for_update=for_update)
    if hv.ps_id != ps_id:
        raise errors.Forbidden(f"hypervisor {hv.name} is discovered by another process server")
    return hv


def ps_item(hv: Hypervisor) -> dict[str, Any]:
    """A hypervisor in its PS's settings document: never a password."""
    return {"name": hv.name, "address": hv.address, "port": hv.port, "account": hv.account,
            "fingerprint": hv.fingerprint, "discover_seq": hv.discover_seq}


def _disks(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > MAX_DISKS:
        raise errors.BadRequest(f"{where}.disks must be a list of at most {MAX_DISKS} disks")
    out = []
    for disk in value:
        if not isinstance(disk, dict):
            raise errors.BadRequest(f"{where}.disks[] must be objects {{name, size_bytes}}")
        out.append({"name": validate.string(disk, "name", max_len=255),
                    "size_bytes": validate.integer(disk, "size_bytes")})
    return out


def parse_machine(item: Any) -> dict[str, Any]:
    """One VM of a discovery report (pure)."""
    if not isinstance(item, dict):
        raise errors.BadRequest("machines[] must be objects")
    model.body_keys(item, allowed=("hypervisor", "name", "vm", "host_id", "address", "os", "power_state", "disks",
                                   "agent_installed"), required=("host_id", "address", "os", "power_state"))
    vm = item.get("vm", item.get("name"))
    if not isinstance(vm, str) or not vm or len(vm) > 255:
        raise errors.BadRequest("machines[].vm (or name) must be a string of 1 to 255 characters")
    if item.get("agent_installed", False) not in (True, False):
        raise errors.BadRequest("machines[].agent_installed must be true or false")
    return {"vm": vm, "host_id": validate.string(item, "host_id", pattern=validate.NAME),
            "address": validate.string(item, "address"), "os": validate.choice(item, "os", OS_KINDS),
            "power_state": validate.choice(item, "power_state", POWER_STATES),
            "disks": _disks(item.get("disks", []), f"machines[{vm}]"),
            "agent_installed": bool(item.get("agent_installed", False))}


def parse_report(body: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]] | None, dict[str, Any] | None]:
    """(fingerprint, machines, None) or (None, None, error) from an inventory report (pure)."""
    if "error" in body:
        model.body_keys(body, allowed=("error",))
        err = body["error"]
        if not isinstance(err, dict):
            raise errors.BadRequest("error must be an object {code, message}")
        return None, None, {"code": validate.string(err, "code", max_len=64),
                            "message": model.text(err, "message", max_len=MAX_ERROR_CHARS, default="")}
    model.body_keys(body, allowed=("fingerprint", "machines"), required=("fingerprint", "machines"))
    machines = body["machines"]
    if not isinstance(machines, list) or len(machines) > MAX_MACHINES:
        raise errors.BadRequest(f"machines must be a list of at most {MAX_MACHINES} machines")
    parsed = [parse_machine(m) for m in machines]
    if len({m["vm"] for m in parsed}) != len(parsed):
        raise errors.BadRequest("machines[] names a VM twice")
    return fingerprint(body["fingerprint"]), parsed, None


async def store_report(session: AsyncSession, hv: Hypervisor, seen: str | None,
                       machines: list[dict[str, Any]] | None, error: dict[str, Any] | None) -> bool:
    """Store a report on ``hv`` (locked); True if it pinned the fingerprint (a settings change).
    409 and nothing stored when ``seen`` differs from the pinned fingerprint."""
    now = time.time_ns()
    if error is not None:
        hv.last_error = {**error, "at_ns": now}
        log.warning("hypervisor_discovery_failed", name=hv.name, code=error["code"])
        return False
    if hv.fingerprint is not None and seen != hv.fingerprint:
        log.warning("hypervisor_fingerprint_mismatch", name=hv.name, pinned=hv.fingerprint, seen=seen)
        raise errors.Conflict(f"hypervisor {hv.name} presented certificate {seen}, not the pinned {hv.fingerprint}",
                              code="fingerprint_mismatch")
    pinned = hv.fingerprint is None
    hv.fingerprint, hv.last_discovery_ns, hv.last_error = seen, now, None
    existing = {r.vm: r for r in (await session.scalars(
        select(DiscoveredMachine).where(DiscoveredMachine.hypervisor == hv.name))).all()}
    for item in machines or []:
        row = existing.pop(item["vm"], None)
        if row is None:
            session.add(DiscoveredMachine(hypervisor=hv.name, seen_ns=now, **item))
            continue
        for key, value in item.items():
            if getattr(row, key) != value:
                setattr(row, key, value)
        row.seen_ns = now
    for row in existing.values():
        await session.delete(row)
    log.info("hypervisor_discovered", name=hv.name, machines=len(machines or []), pinned=pinned)
    return pinned


# ------------------------------------------------------------------ the inventory


async def agents_by_host(session: AsyncSession, host_ids: set[str]) -> dict[str, str]:
    """host id -> component id of the registered agent with that host id."""
    if not host_ids:
        return {}
    rows = (await session.execute(select(Component.host_id, Component.component_id)
                                  .where(Component.role == "agent", Component.host_id.in_(sorted(host_ids))))).all()
    return {str(h): str(c) for h, c in rows}


def inventory_item(row: DiscoveredMachine, component_id: str | None, protected: bool) -> dict[str, Any]:
    return {"hypervisor": row.hypervisor, "vm": row.vm, "host_id": row.host_id, "address": row.address,
            "os": row.os, "power_state": row.power_state, "disks": row.disks, "agent_installed": row.agent_installed,
            "seen_ns": row.seen_ns, "component_id": component_id, "protected": protected}


async def inventory(session: AsyncSession, hypervisor: str | None = None) -> list[dict[str, Any]]:
    """Every discovered machine (of one hypervisor if given), with its registered agent if any and
    whether that machine is protected."""
    stmt = select(DiscoveredMachine).order_by(DiscoveredMachine.hypervisor, DiscoveredMachine.vm)
    if hypervisor is not None:
        stmt = stmt.where(DiscoveredMachine.hypervisor == hypervisor)
    rows = (await session.scalars(stmt)).all()
    agents = await agents_by_host(session, {r.host_id for r in rows})
    ids = sorted(set(agents.values()))
    states = {str(m): str(s) for m, s in (await session.execute(
        select(Machine.machine_id, Machine.protection_state).where(Machine.machine_id.in_(ids)))).all()} if ids else {}
    out = []
    for row in rows:
        comp = agents.get(row.host_id)
        out.append(inventory_item(row, comp, comp is not None and states.get(comp, "unprotected") != "unprotected"))
    return out
