"""Bookmarks across machines: the CS's two-phase protocol (ARCHITECTURE.md §3, docs/PROTOCOL.md).

A pure core (:class:`Run`: the bookmark's state and the rules below, no I/O, no clock) and a thin
shell over the database (requests, member reports, the deadline sweep, the agents' documents).

Life of a bookmark whose members are M1..Mn (a replication group, or machines named in the request):

- ``preparing``: each member's settings document shows it with phase ``prepare``; the agent runs
  its pre-freeze hook (consistency ``app``), freezes its writes and reports ``frozen`` with a
  session id naming that freeze;
- ``committing``: every member reported ``frozen`` by the deadline (the decision); documents show
  phase ``commit``: a member still frozen in that session cuts every replicating disk with the tag,
  thaws and reports ``tagged`` with its points;
- ``committed``: every member reported ``tagged`` (for the session it froze in, on every protected
  disk it has);
- ``aborted`` (with the reason): a member failed (hook, freeze, disk not protected), thawed before
  the commit reached it (``expired``, ``thawed``), froze anew after the decision, or a deadline
  passed (``timeout_s`` to freeze; as long again after the decision to report the tags). Members
  still frozen see phase ``abort`` and thaw without tagging (and thaw on their own at their freeze
  deadline anyway).

Why it is consistent: a member cuts only inside the freeze it reported before the decision, and
no member thaws before it saw the decision, so every member's freeze spans the decision instant;
a write that caused another machine's write is therefore before its own machine's cut whenever
the effect is before its machine's cut. Reports are idempotent (agents retry); a report that
contradicts what the member already said is refused with 409.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import validate
from cs.db import meta
from cs.db.models import Bookmark, Component, Disk, ReplicationGroup
from cs.state import CSState

log = dlog.get("drlab.cs.bookmarks")

ACTIVE = ("preparing", "committing")
FINAL = ("committed", "aborted")
STATES = ACTIVE + FINAL
CONSISTENCY = ("app", "crash")
REPORTS = ("frozen", "tagged", "failed", "thawed", "expired")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_MEMBERS = 64
MAX_ERROR_CHARS = 2000
MAX_PAGE = 1000
ABORT_LINGER_NS = 60 * 10**9  # members still frozen see phase ``abort`` this long after an abort
MIN_TIMEOUT_S = 0.1


# ---------------------------------------------------------------------------------- pure core


@dataclass
class Member:
    state: str = "pending"  # pending, then what it reported last: frozen, tagged, failed, thawed, expired
    session: str = ""  # the freeze it reported ``frozen`` in
    points: dict[str, list[int]] = field(default_factory=dict)  # disk id -> [gen, seq] of the tagged batch
    freeze_ms: float | None = None
    hook_ms: float | None = None
    error: str | None = None
    reported_ns: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Member:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Report:
    """What a member says (parsed by :func:`parse_report`)."""

    state: str
    session: str = ""
    points: dict[str, tuple[int, int]] = field(default_factory=dict)
    freeze_ms: float | None = None
    hook_ms: float | None = None
    error: str | None = None


@dataclass
class Run:
    """One bookmark's protocol state. Methods return whether anything changed."""

    state: str
    deadline_ns: int
    timeout_ns: int
    members: dict[str, Member]
    decided_ns: int | None = None
    finished_ns: int | None = None
    reason: str | None = None

    def phase_for(self, machine_id: str, now_ns: int) -> str | None:
        """What the member's settings document shows (None: nothing, it has nothing left to do)."""
        m = self.members.get(machine_id)
        if m is None:
            return None
        if self.state == "preparing" and m.state in ("pending", "frozen"):
            return "prepare"
        if self.state == "committing" and m.state in ("frozen", "tagged"):
            return "commit"  # (tagged too: a member's own report changes no document)
        if self.state == "aborted" and m.state in ("pending", "frozen") and \
                now_ns - (self.finished_ns or 0) <= ABORT_LINGER_NS:
            return "abort"
        return None

    def phases(self, now_ns: int) -> dict[str, str | None]:
        return {k: self.phase_for(k, now_ns) for k in self.members}

    def report(self, machine_id: str, rep: Report, now_ns: int, disks: set[str]) -> bool:
        """Apply a member's report; ``disks``: the member's protected disks (all must be tagged)."""
        m = self.members[machine_id]
        if rep.state == "frozen":
            return self._frozen(machine_id, m, rep, now_ns)
        if rep.state == "tagged":
            return self._tagged(machine_id, m, rep, now_ns, disks)
        if m.state == rep.state:
            return False  # a retry
        if m.state == "tagged":
            raise errors.Conflict(f"member {machine_id} already reported its tag")
        m.state, m.error, m.reported_ns = rep.state, rep.error, now_ns
        m.freeze_ms, m.hook_ms = rep.freeze_ms, rep.hook_ms
        if self.state in ACTIVE:
            self._abort(now_ns, f"member {machine_id} {rep.state}: {rep.error or 'no detail'}")
        return True

    def _frozen(self, machine_id: str, m: Member, rep: Report, now_ns: int) -> bool:
        if m.state == "frozen" and m.session == rep.session:
            return False  # a retry
        if m.state in ("tagged", "failed", "thawed", "expired") or self.state == "committed":
            raise errors.Conflict(f"member {machine_id} already reported {m.state}")
        m.state, m.session, m.reported_ns, m.hook_ms = "frozen", rep.session, now_ns, rep.hook_ms
        if self.state == "committing":
            self._abort(now_ns, f"member {machine_id} froze again after the decision")
        elif self.state == "preparing" and now_ns > self.deadline_ns:
            self._abort(now_ns, f"member {machine_id} froze after the deadline")
        elif self.state == "preparing" and all(x.state == "frozen" for x in self.members.values()):
            self.state, self.decided_ns = "committing", now_ns
        return True

    def _tagged(self, machine_id: str, m: Member, rep: Report, now_ns: int, disks: set[str]) -> bool:
        if m.state == "tagged" and m.session == rep.session:
            return False  # a retry
        if self.state == "preparing" or m.state != "frozen":
            raise errors.Conflict(f"member {machine_id} may not tag: bookmark {self.state}, member {m.state}")
        same = rep.session == m.session
        m.state, m.reported_ns = "tagged", now_ns
        m.points = {d: [g, s] for d, (g, s) in sorted(rep.points.items())}
        m.freeze_ms, m.hook_ms = rep.freeze_ms, rep.hook_ms if rep.hook_ms is not None else m.hook_ms
        if self.state != "committing":
            return True  # aborted meanwhile: the tags exist but make no group point
        missing = sorted(disks - set(rep.points))
        if not same:
            self._abort(now_ns, f"member {machine_id} tagged in another freeze than the one it reported")
        elif missing:
            self._abort(now_ns, f"member {machine_id} did not tag disks {', '.join(missing)}")
        elif all(x.state == "tagged" for x in self.members.values()):
            self.state, self.finished_ns = "committed", now_ns
        return True

    def due(self, now_ns: int) -> bool:
        if self.state == "preparing":
            return now_ns > self.deadline_ns
        return self.state == "committing" and now_ns > (self.decided_ns or 0) + self.timeout_ns

    def expire(self, now_ns: int) -> bool:
        """Abort at the deadline: to freeze (preparing) or to report the tags (committing)."""
        if not self.due(now_ns):
            return False
        seconds = self.timeout_ns / 1e9
        if self.state == "preparing":
            late = sorted(k for k, m in self.members.items() if m.state != "frozen")
            self._abort(now_ns, f"timeout: {', '.join(late)} did not freeze within {seconds:g} s")
        else:
            late = sorted(k for k, m in self.members.items() if m.state != "tagged")
            self._abort(now_ns, f"timeout: {', '.join(late)} did not report their tags within {seconds:g} s")
        return True

    def _abort(self, now_ns: int, reason: str) -> None:
        self.state, self.reason, self.finished_ns = "aborted", reason, now_ns


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
