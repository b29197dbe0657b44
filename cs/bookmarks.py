"""Bookmarks across machines: the shell of the CS's two-phase protocol over the database (requests,
member reports, the deadline sweep, the agents' documents) and the replication groups they run on.

The protocol's rules and its pure core (:class:`~cs.bookmarks_core.Run`: no I/O, no clock) are in
cs/bookmarks_core.py; this module loads a row into a ``Run``, applies a request or a report to it and
stores it back, under a row lock. Reports are idempotent (agents retry); a report that contradicts
what the member already said is refused with 409.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import validate
from cs.bookmarks_core import ABORT_LINGER_NS, ACTIVE, Member, Report, Run
from cs.db import meta
from cs.db.models import Bookmark, Component, Disk, ReplicationGroup
from cs.state import CSState

log = dlog.get("drlab.cs.bookmarks")

CONSISTENCY = ("app", "crash")
REPORTS = ("frozen", "tagged", "failed", "thawed", "expired")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}\Z")
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
MAX_MEMBERS = 64
MAX_ERROR_CHARS = 2000
MAX_PAGE = 1000
MIN_TIMEOUT_S = 0.1


# ---------------------------------------------------------------------------------- rows and views


def run_of(bm: Bookmark) -> Run:
    return Run(state=bm.state, deadline_ns=bm.deadline_ns, timeout_ns=bm.timeout_ms * 1_000_000,
               members={k: Member.from_json(v) for k, v in (bm.members or {}).items()},
               decided_ns=bm.decided_ns, finished_ns=bm.finished_ns, reason=bm.reason)


def store_run(bm: Bookmark, run: Run) -> None:
    bm.state, bm.reason, bm.decided_ns, bm.finished_ns = run.state, run.reason, run.decided_ns, run.finished_ns
    bm.members = {k: asdict(m) for k, m in run.members.items()}  # a new object: the JSON column sees it


def view(bm: Bookmark) -> dict[str, Any]:
    members = []
    for machine_id, raw in sorted((bm.members or {}).items()):
        m = Member.from_json(raw)
        members.append({"machine_id": machine_id, "state": m.state, "freeze_ms": m.freeze_ms, "hook_ms": m.hook_ms,
                        "error": m.error, "reported_ns": m.reported_ns,
                        "points": {d: {"gen": g, "seq": s} for d, (g, s) in m.points.items()}})
    latency = (bm.finished_ns - bm.created_ns) / 1e6 if bm.state == "committed" and bm.finished_ns else None
    return {"bookmark_id": bm.bookmark_id, "tag": bm.tag, "name": bm.tag.partition(":")[2], "group": bm.group_name,
            "consistency": bm.consistency, "state": bm.state, "reason": bm.reason, "timeout_s": bm.timeout_ms / 1000,
            "created_ns": bm.created_ns, "deadline_ns": bm.deadline_ns, "decided_ns": bm.decided_ns,
            "finished_ns": bm.finished_ns, "latency_ms": latency, "members": members}


def tag_for(consistency: str, name: str) -> str:
    """The tag every disk of every member gets: ``group-app:NAME`` or ``group-crash:NAME``."""
    return f"group-{consistency}:{name}"


# ---------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    machines: tuple[str, ...] | None
    group: str | None
    name: str | None
    consistency: str
    timeout_s: float | None


def _unknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = set(body) - known
    if unknown:
        raise errors.BadRequest(f"unknown fields: {', '.join(sorted(str(k)[:32] for k in unknown))}")


def parse_machines(value: Any, field_name: str = "machines") -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_MEMBERS:
        raise errors.BadRequest(f"{field_name} must be a list of 1 to {MAX_MEMBERS} machine ids")
    ids = tuple(sorted({validate.hex_id(v, "machine id") for v in value}))
    if len(ids) != len(value):
        raise errors.BadRequest(f"{field_name} names a machine twice")
    return ids


def parse_request(body: dict[str, Any], max_timeout_s: float) -> Request:
    _unknown(body, {"machines", "group", "name", "consistency", "timeout_s"})
    if ("machines" in body) == ("group" in body):
        raise errors.BadRequest("give either machines or group")
    machines = parse_machines(body["machines"]) if "machines" in body else None
    group = validate.string(body, "group", max_len=64, pattern=GROUP_NAME) if "group" in body else None
    name = validate.string(body, "name", max_len=100, pattern=NAME) if "name" in body else None
    consistency = validate.choice(body, "consistency", CONSISTENCY) if "consistency" in body else "app"
    timeout_s = validate.number(body, "timeout_s", low=MIN_TIMEOUT_S, high=max_timeout_s) \
        if "timeout_s" in body else None
    return Request(machines, group, name, consistency, timeout_s)


def parse_report(body: dict[str, Any]) -> Report:
    _unknown(body, {"state", "session", "points", "freeze_ms", "hook_ms", "error"})
    state = validate.choice(body, "state", REPORTS)
    session = validate.hex_id(body.get("session"), "session") if state in ("frozen", "tagged") or "session" in body \
        else ""
    points: dict[str, tuple[int, int]] = {}
    if state == "tagged":
        raw = body.get("points")
        if not isinstance(raw, dict) or not 1 <= len(raw) <= 256:
            raise errors.BadRequest("points must be an object of 1 to 256 disk ids")
        for disk_id, pair in raw.items():
            validate.hex_id(disk_id, "points disk id")
            if not isinstance(pair, list) or len(pair) != 2 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= validate.MAX_U63 for v in pair):
                raise errors.BadRequest("each point must be [generation, seq], both integers >= 1")
            points[disk_id] = (pair[0], pair[1])
    elif "points" in body:
        raise errors.BadRequest("only a tagged report carries points")
    freeze_ms = validate.number(body, "freeze_ms", low=0.0, high=1e9) if "freeze_ms" in body else None
    hook_ms = validate.number(body, "hook_ms", low=0.0, high=1e9) if "hook_ms" in body else None
    error = body.get("error")
    if error is not None and not isinstance(error, str):
        raise errors.BadRequest("error must be a string")
    return Report(state, session, points, freeze_ms, hook_ms, error[:MAX_ERROR_CHARS] if error else None)


# ---------------------------------------------------------------------------------- shell


async def _members_of(session: AsyncSession, req: Request) -> tuple[str, ...]:
    if req.group is None:
        assert req.machines is not None
        return req.machines
    group = await session.get(ReplicationGroup, req.group)
    if group is None:
        raise errors.NotFound(f"no replication group {req.group}")
    if not group.machines:
        raise errors.Conflict(f"replication group {req.group} has no machine")
    return tuple(group.machines)


async def _check_agents(session: AsyncSession, machines: tuple[str, ...]) -> None:
    rows = (await session.scalars(select(Component).where(Component.component_id.in_(machines),
                                                          Component.role == "agent"))).all()
    missing = sorted(set(machines) - {c.component_id for c in rows})
    if missing:
        raise errors.NotFound(f"no machine {missing[0]}")


async def _protected_disks(session: AsyncSession, machine_id: str) -> set[str]:
    rows = await session.scalars(select(Disk.disk_id).where(Disk.machine_id == machine_id, Disk.ps_id.is_not(None)))
    return set(rows.all())


async def _active(session: AsyncSession) -> list[Bookmark]:
    return list((await session.scalars(select(Bookmark).where(Bookmark.state.in_(ACTIVE)))).all())


async def create(state: CSState, req: Request) -> dict[str, Any]:
    """Start a bookmark (phase ``prepare`` in every member's settings)."""
    now = time.time_ns()
    timeout_s = req.timeout_s if req.timeout_s is not None else state.cfg.bookmark_timeout_s
    bookmark_id = uuid.uuid4().hex
    tag = tag_for(req.consistency, req.name or bookmark_id)
    async with state.change() as session:
        machines = await _members_of(session, req)
        await _check_agents(session, machines)
        for machine_id in machines:
            if not await _protected_disks(session, machine_id):
                raise errors.Conflict(f"machine {machine_id} has no protected disk")
        busy = {m for b in await _active(session) for m in (b.members or {})} & set(machines)
        if busy:
            raise errors.Conflict(f"machine {sorted(busy)[0]} is already in a bookmark in progress")
        if (await session.scalars(select(Bookmark.bookmark_id).where(Bookmark.tag == tag))).first() is not None:
            raise errors.Conflict(f"tag {tag} is taken")
        bm = Bookmark(bookmark_id=bookmark_id, tag=tag, group_name=req.group, consistency=req.consistency,
                      state="preparing", reason=None, timeout_ms=round(timeout_s * 1000), created_ns=now,
                      deadline_ns=now + round(timeout_s * 1e9), decided_ns=None, finished_ns=None,
                      members={m: asdict(Member()) for m in machines})
        session.add(bm)
    log.info("bookmark_started", bookmark_id=bookmark_id, tag=tag, members=len(machines), group=req.group,
             consistency=req.consistency, timeout_s=timeout_s)
    return view(bm)


async def get(state: CSState, bookmark_id: str) -> dict[str, Any]:
    async with state.db.read() as session:
        bm = await session.get(Bookmark, bookmark_id)
        if bm is None:
            raise errors.NotFound(f"no bookmark {bookmark_id}")
        return view(bm)


def _log_transition(bm: Bookmark, before: str) -> None:
    if bm.state == before:
        return
    log.info("bookmark_" + bm.state, bookmark_id=bm.bookmark_id, tag=bm.tag, reason=bm.reason,
             latency_ms=view(bm)["latency_ms"])


async def report(state: CSState, machine_id: str, bookmark_id: str, rep: Report) -> dict[str, Any]:
    """A member's report; answers ``{ok, phase}`` (what the member should do now, if anything)."""
    now = time.time_ns()
    async with state.db.write() as session:
        bm = await session.get(Bookmark, bookmark_id, with_for_update=True)
        if bm is None:
            raise errors.NotFound(f"no bookmark {bookmark_id}")
        if machine_id not in (bm.members or {}):
            raise errors.Forbidden(f"machine {machine_id} is not a member of bookmark {bookmark_id}")
        disks = await _protected_disks(session, machine_id)
        foreign = sorted(set(rep.points) - disks)
        if foreign:
            raise errors.BadRequest(f"disk {foreign[0]} is not a protected disk of machine {machine_id}")
        run, before = run_of(bm), bm.state
        shown = run.phases(now)
        changed = run.report(machine_id, rep, now, disks)
        wake = run.phases(now) != shown  # only a change a document shows bumps the settings version
        if changed:
            store_run(bm, run)
        if wake:
            await meta.bump_version(session)
        phase = run.phase_for(machine_id, now)
    if wake:
        await state.watch.changed()
    if changed:
        log.info("bookmark_report", bookmark_id=bookmark_id, machine_id=machine_id, report=rep.state,
                 freeze_ms=rep.freeze_ms, error=rep.error)
        _log_transition(bm, before)
    return {"ok": True, "state": run.state, "phase": phase}


async def sweep(state: CSState, now_ns: int | None = None) -> int:
    """Abort every bookmark past its deadline; how many were aborted."""
    now = time.time_ns() if now_ns is None else now_ns
    async with state.db.read() as session:
        due = [b.bookmark_id for b in await _active(session) if run_of(b).due(now)]
    aborted = 0
    for bookmark_id in due:
        async with state.db.write() as session:
            bm = await session.get(Bookmark, bookmark_id, with_for_update=True)
            if bm is None:
                continue
            run, before = run_of(bm), bm.state
            if not run.expire(now):
                continue  # another CS process, or a report, got there first
            store_run(bm, run)
            await meta.bump_version(session)
        aborted += 1
        await state.watch.changed()
        _log_transition(bm, before)
    return aborted


async def agent_requests(session: AsyncSession, machine_id: str) -> list[dict[str, Any]]:
    """The bookmarks the machine's agent has to act on (its settings document's ``bookmarks``)."""
    now = time.time_ns()
    stmt = select(Bookmark).where(Bookmark.state.in_(ACTIVE) | (
        (Bookmark.state == "aborted") & (Bookmark.finished_ns >= now - ABORT_LINGER_NS))).order_by(Bookmark.created_ns)
    out = []
    for bm in (await session.scalars(stmt)).all():
        phase = run_of(bm).phase_for(machine_id, now)
        if phase is not None:
            out.append({"bookmark_id": bm.bookmark_id, "tag": bm.tag, "consistency": bm.consistency,
                        "phase": phase, "remaining_ms": max(0, (bm.deadline_ns - now) // 1_000_000)})
    return out


# ---------------------------------------------------------------------------------- replication groups


def group_view(g: ReplicationGroup) -> dict[str, Any]:
    return {"name": g.name, "machines": list(g.machines), "created_ns": g.created_ns, "updated_ns": g.updated_ns}


def parse_group(body: dict[str, Any]) -> tuple[str, ...]:
    _unknown(body, {"machines"})
    return parse_machines(body.get("machines"))


async def put_group(state: CSState, name: str, machines: tuple[str, ...]) -> dict[str, Any]:
    now = time.time_ns()
    async with state.db.write() as session:
        await _check_agents(session, machines)
        group = await session.get(ReplicationGroup, name)
        if group is None:
            group = ReplicationGroup(name=name, machines=list(machines), created_ns=now, updated_ns=now)
            session.add(group)
        else:
            group.machines, group.updated_ns = list(machines), now
    log.info("replication_group_set", name=name, machines=len(machines))
    return group_view(group)


async def get_group(state: CSState, name: str) -> dict[str, Any]:
    async with state.db.read() as session:
        group = await session.get(ReplicationGroup, name)
        if group is None:
            raise errors.NotFound(f"no replication group {name}")
        return group_view(group)


async def delete_group(state: CSState, name: str) -> None:
    async with state.db.write() as session:
        group = await session.get(ReplicationGroup, name)
        if group is None:
            raise errors.NotFound(f"no replication group {name}")
        await session.delete(group)
    log.info("replication_group_deleted", name=name)
