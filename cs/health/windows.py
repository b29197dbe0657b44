"""Windows and decisions (pure): since when each level of each (code, disk) has held, which
conditions have held for their whole window, and what that means for the open alerts.

Rules of the window:
- a level holds from the first evaluation that saw it holding (``since``) for as long as every
  later evaluation sees it holding; one evaluation that does not forgets it, so a spike shorter
  than the window raises nothing;
- a (code, disk) is *due* at the strongest level that has held for its window;
- an open alert stays open while its (code, disk) holds at any level, is replaced when it is due
  at another severity, and clears as soon as nothing of it holds;
- codes the verdict does not own (their rule did not say) keep their windows and alerts as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cs.health.rules import RANK, Verdict

Key = tuple[str, str | None]  # (code, disk id)
LevelKey = tuple[str, str | None, str]  # (code, disk id, severity)
Since = dict[LevelKey, int]


@dataclass(frozen=True)
class Condition:
    """A condition due now: the alert it raises."""

    code: str
    severity: str
    disk_id: str | None
    message: str

    @property
    def key(self) -> Key:
        return self.code, self.disk_id


@dataclass(frozen=True)
class Plan:
    since: Since  # the windows of the verdict's codes after this evaluation
    due: tuple[Condition, ...]
    holding: frozenset[Key]


@dataclass(frozen=True)
class Decision:
    to_raise: tuple[Condition, ...]
    to_clear: tuple[Key, ...]


def track(prev: Mapping[LevelKey, int], verdict: Verdict, now_ns: int) -> Plan:
    """The windows after one evaluation, and what is due (``prev``: every window of the source)."""
    since: Since = {}
    due: dict[Key, Condition] = {}
    holding: set[Key] = set()
    for obs in verdict.observations:
        best: str | None = None
        for level in obs.levels:
            if not level.holds:
                continue
            lk = (obs.code, obs.disk_id, level.severity)
            start = since[lk] = min(prev.get(lk, now_ns), since.get(lk, now_ns))
            holding.add(obs.key)
            if now_ns - start >= level.window_ns and (best is None or RANK[level.severity] > RANK[best]):
                best = level.severity
        if best is not None and (obs.key not in due or RANK[best] > RANK[due[obs.key].severity]):
            due[obs.key] = Condition(obs.code, best, obs.disk_id, obs.message)
    return Plan(since, tuple(due.values()), frozenset(holding))


def window_changes(prev: Mapping[LevelKey, int], plan: Plan, codes: frozenset[str]) -> tuple[Since, list[LevelKey]]:
    """(windows to add, windows to drop) to go from ``prev`` to ``plan.since`` for ``codes``."""
    added = {k: v for k, v in plan.since.items() if k not in prev}
    dropped = [k for k in prev if k[0] in codes and k not in plan.since]
    return added, dropped


def decide(open_alerts: Mapping[Key, str], plan: Plan, codes: frozenset[str]) -> Decision:
    """Raise what is due and not open at that severity; clear what no longer holds.
    ``open_alerts``: the source's open alerts as {(code, disk): severity}."""
    owned = {k: sev for k, sev in open_alerts.items() if k[0] in codes}
    to_clear = [k for k in owned if k not in plan.holding]
    to_raise = []
    for c in plan.due:
        if c.key not in owned:
            to_raise.append(c)
        elif owned[c.key] != c.severity:
            to_clear.append(c.key)  # replaced by the alert at its new severity
            to_raise.append(c)
    return Decision(tuple(to_raise), tuple(sorted(to_clear, key=lambda k: (k[0], k[1] or ""))))


def worst(severities: list[str]) -> str:
    """A component's health: its worst open alert's severity, ``ok`` for none."""
    return max(severities, key=lambda s: RANK.get(s, 0), default="ok")
