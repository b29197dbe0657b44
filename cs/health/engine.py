"""The health shell: runs the rules (rules.py) over what the database holds and writes what
follows — windows (``health_windows``) and alerts (cs/alerts.py). :func:`observe` and
:func:`observe_many` run in the heartbeat's write transaction; :func:`evaluate_all` is every
component at once (the periodic evaluator: silence, windows that end between heartbeats, RPO):
it reads, then settles in one write transaction only the components whose state moves.

Everything it decides from is in the database, so a restarted CS, or a second CS process on the
same database, carries on the same windows; raising and clearing are idempotent per key
(cs/alerts.py), so two evaluators racing raise and clear each alert once.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.config import HealthConfig
from cs import alerts
from cs.db import repo
from cs.db.engine import Database
from cs.db.models import Alert, Component, Disk, HealthWindow, Machine, Policy
from cs.health import rules
from cs.health.windows import Decision, Key, LevelKey, decide, track, window_changes

DEFAULT_POLICY = "default"  # cs/policies.py
RPO_STATES = ("protected", "resync", "resync-required", "resyncing")  # past the initial copy


@dataclass
class Held:
    """A source's windows and open alerts as the database holds them."""

    windows: dict[LevelKey, HealthWindow] = field(default_factory=dict)
    open: dict[Key, Alert] = field(default_factory=dict)


@dataclass
class Outcome:
    raised: int = 0
    cleared: int = 0


async def _windows(session: AsyncSession, sources: Collection[str] | None = None
                   ) -> dict[str, dict[LevelKey, HealthWindow]]:
    """{source id: its windows} of every source, or of ``sources``."""
    stmt = select(HealthWindow)
    if sources is not None:
        stmt = stmt.where(HealthWindow.source_id.in_(list(sources)))
    out: dict[str, dict[LevelKey, HealthWindow]] = {}
    for w in (await session.scalars(stmt)).all():
        out.setdefault(w.source_id, {})[(w.code, w.disk_key or None, w.severity)] = w
    return out


@dataclass(frozen=True)
class Changes:
    added: dict[LevelKey, int]
    dropped: list[LevelKey]
    decision: Decision

    @property
    def empty(self) -> bool:
        return not (self.added or self.dropped or self.decision.to_raise or self.decision.to_clear)


def changes(verdict: rules.Verdict, held: Held, now_ns: int) -> Changes:
    """What moving ``held`` to ``verdict`` at ``now_ns`` writes (pure)."""
    prev = {k: w.since_ns for k, w in held.windows.items()}
    plan = track(prev, verdict, now_ns)
    added, dropped = window_changes(prev, plan, verdict.codes)
    return Changes(added, dropped, decide({k: a.severity for k, a in held.open.items()}, plan, verdict.codes))


async def settle(session: AsyncSession, comp: Component, verdict: rules.Verdict, held: Held, now_ns: int, *,
                 notify: bool) -> Outcome:
    """Move ``comp``'s windows and alerts to what ``verdict`` says at ``now_ns``."""
    todo = changes(verdict, held, now_ns)
    added, dropped, decision = todo.added, todo.dropped, todo.decision
    if dropped:
        ids = [held.windows[k].window_id for k in dropped]
        await session.execute(delete(HealthWindow).where(HealthWindow.window_id.in_(ids)))
    if added:
        rows = [{"source_id": comp.component_id, "code": code, "disk_key": disk or "", "severity": sev,
                 "since_ns": since} for (code, disk, sev), since in added.items()]
        await session.execute(alerts.insert_ignoring_conflicts(session, HealthWindow).values(rows))
    out = Outcome()
    for key in decision.to_clear:
        out.cleared += await alerts.close_alert(session, held.open[key], comp, now_ns, notify=notify)
    for c in decision.to_raise:
        out.raised += await alerts.open_alert(session, comp, c, now_ns, notify=notify) is not None
    return out


def _any_holds(verdict: rules.Verdict) -> bool:
    return any(level.holds for obs in verdict.observations for level in obs.levels)


Beat = tuple[Component, dict[str, Any], int]  # a heartbeat: the component, its metrics, its time (ns)


async def observe(session: AsyncSession, cfg: HealthConfig, comp: Component, metrics: dict[str, Any], now_ns: int,
                  *, notify: bool) -> Outcome:
    """``comp`` heartbeated ``metrics`` at ``now_ns``: its silence ends, its metric rules run."""
    return await observe_many(session, cfg, [(comp, metrics, now_ns)], notify=notify)


async def observe_many(session: AsyncSession, cfg: HealthConfig, beats: Sequence[Beat], *, notify: bool) -> Outcome:
    """Heartbeats written in one transaction (the last one of each component counts). Healthy
    components with no window open cost one indexed read for the whole batch."""
    last = {comp.component_id: (comp, metrics, now) for comp, metrics, now in beats}
    verdicts = {cid: rules.evaluate(cfg, rules.Subject(comp.role, metrics, comp.registered_at, now, now))
                for cid, (comp, metrics, now) in last.items()}
    windows = await _windows(session, list(last))
    busy = [cid for cid, verdict in verdicts.items() if windows.get(cid) or _any_holds(verdict)]
    if not busy:
        return Outcome()
    opened: dict[str, dict[Key, Alert]] = {}
    for a in await alerts.open_alerts(session, busy):
        opened.setdefault(a.source_id, {})[(a.code, a.disk_id)] = a
    total = Outcome()
    for cid in busy:
        comp, _, now = last[cid]
        out = await settle(session, comp, verdicts[cid], Held(windows.get(cid, {}), opened.get(cid, {})), now,
                           notify=notify)
        total.raised += out.raised
        total.cleared += out.cleared
    return total


async def rpo_inputs(session: AsyncSession, cfg: HealthConfig, comps: dict[str, Component]
                     ) -> dict[str, list[rules.DiskRpo]]:
    """{machine id: its replicating disks' latest durable point (the MT's report) and threshold
    (the machine's policy, else the default policy, else ``cfg.rpo_threshold_s``)}."""
    disks: Sequence[Disk] = (await session.scalars(
        select(Disk).where(Disk.mt_id.is_not(None), Disk.state.in_(RPO_STATES)))).all()
    thresholds = dict((await session.execute(
        select(Machine.machine_id, Policy.rpo_threshold_s).join(Policy, Policy.name == Machine.policy_name))).all())
    default = await session.get(Policy, DEFAULT_POLICY)
    fallback = float(default.rpo_threshold_s) if default is not None else cfg.rpo_threshold_s
    out: dict[str, list[rules.DiskRpo]] = {}
    for disk in disks:
        mt = comps.get(disk.mt_id or "")
        reported = (mt.metrics or {}).get("disks") if mt is not None else None
        entry = reported.get(disk.disk_id) if isinstance(reported, dict) else None
        point_ns = entry.get("latest_point_ns") if isinstance(entry, dict) else None
        if not isinstance(point_ns, int) or isinstance(point_ns, bool) or point_ns <= 0:
            continue  # no point yet (or an MT that does not say)
        threshold = thresholds.get(disk.machine_id)
        out.setdefault(disk.machine_id, []).append(
            rules.DiskRpo(disk.disk_id, point_ns, float(threshold) if threshold else fallback))
    return out


async def _subjects(session: AsyncSession, cfg: HealthConfig, now_ns: int, only: set[str] | None
                    ) -> list[tuple[Component, rules.Subject, Held]]:
    """Every component (or those in ``only``) with what the rules see of it and what it holds."""
    comps = {c.component_id: c for c in await repo.components(session)}
    windows = await _windows(session)
    opened: dict[str, dict[Key, Alert]] = {}
    for a in await alerts.open_alerts(session):
        opened.setdefault(a.source_id, {})[(a.code, a.disk_id)] = a
    rpo = await rpo_inputs(session, cfg, comps)
    out = []
    for comp in comps.values():
        if only is not None and comp.component_id not in only:
            continue
        subject = rules.Subject(comp.role, comp.metrics or {}, comp.registered_at, comp.last_heartbeat, now_ns,
                                tuple(rpo.get(comp.component_id, ())) if comp.role == "agent" else None)
        out.append((comp, subject, Held(windows.get(comp.component_id, {}), opened.get(comp.component_id, {}))))
    return out


async def evaluate_all(db: Database, cfg: HealthConfig, now_ns: int, *, notify: bool) -> Outcome:
    """Every component's rules at ``now_ns``, from its last heartbeat's metrics and its silence.

    A read transaction finds the components whose windows or alerts would change; only those are
    evaluated again, and settled, in a write transaction — usually none, so the evaluator holds
    the write lock (which heartbeats queue on) only when something changes."""
    async with db.read() as session:
        found = await _subjects(session, cfg, now_ns, None)
        moving = {comp.component_id for comp, subject, held in found
                  if not changes(rules.evaluate(cfg, subject), held, now_ns).empty}
    total = Outcome()
    if not moving:
        return total
    async with db.write() as session:
        for comp, subject, held in await _subjects(session, cfg, now_ns, moving):
            out = await settle(session, comp, rules.evaluate(cfg, subject), held, now_ns, notify=notify)
            total.raised += out.raised
            total.cleared += out.cleared
    return total
