"""Named crash points for fault-injection tests: a daemon dies like ``kill -9`` at a chosen place.

Configuration (read once, when this module is imported, i.e. at process start):

- ``DRLAB_CRASH_AT=component.name[:n]`` (e.g. ``ps.after_cache_write:3``), or
- ``DRLAB_{COMPONENT}_CRASH_AT=name[:n]`` (e.g. ``DRLAB_MT_CRASH_AT=after_replica_write:20``, the
  MT's original form, still honoured).

The process calls ``os._exit(137)`` (no cleanup, no flush: what SIGKILL leaves) the n-th time
(default: the 1st) it reaches :func:`hit` for that component and name. Unset: a point costs one
empty-list test. Rules: a point is named after what is durable when it fires
(``after_journal_fsync``), every name is listed in :data:`POINTS` (tests iterate it), and a
spec naming an unknown point or a bad count is refused with ``ValueError`` at the first hit, so
a typo in a test never passes as "did not crash".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL

POINTS: dict[str, tuple[str, ...]] = {
    # mt/apply.py (one batch), mt/journal.py (recovery of an interrupted batch), mt/view.py (commit)
    "mt": ("after_journal_fsync", "after_replica_write", "before_commit", "mid_rollback",
           "mid_commit", "before_commit_truncate"),
    # ps/ingest.py (a batch is durable in the cache, the agent has no ack yet) and ps/uploader.py
    # (the MT acknowledged its durable receipt, the cache file is not released yet)
    "ps": ("after_cache_write", "after_upload"),
}


@dataclass(frozen=True)
class Spec:
    component: str
    name: str
    count: int


def parse(text: str, component: str | None = None) -> Spec:
    """``component.name[:n]`` (or ``name[:n]`` when ``component`` is given) -> Spec."""
    point, _, count = text.strip().partition(":")
    if component is None:
        component, dot, point = point.partition(".")
        if not dot:
            raise ValueError(f"crash point {text!r}: expected component.name[:n]")
    if point not in POINTS.get(component, ()):
        raise ValueError(f"crash point {text!r}: unknown (known: {POINTS})")
    if count and (not count.isdigit() or int(count) < 1):
        raise ValueError(f"crash point {text!r}: the count must be an integer >= 1")
    return Spec(component, point, int(count or 1))


def from_env(env: Mapping[str, str]) -> list[str]:
    """The raw specs the environment sets: ``DRLAB_CRASH_AT`` and every ``DRLAB_X_CRASH_AT``."""
    raw = []
    if env.get("DRLAB_CRASH_AT"):
        raw.append(env["DRLAB_CRASH_AT"])
    for component in POINTS:
        value = env.get(f"DRLAB_{component.upper()}_CRASH_AT")
        if value:
            raw.append(f"{component}.{value}")
    return raw


def env_for(component: str, name: str, count: int = 1) -> dict[str, str]:
    """The environment entry that makes a child process die at ``component.name`` the n-th time."""
    parse(f"{component}.{name}:{count}")
    return {"DRLAB_CRASH_AT": f"{component}.{name}:{count}"}


_raw: list[str] = from_env(os.environ)
_specs: list[Spec] | None = None
_hits: dict[tuple[str, str], int] = {}


def configure(specs: list[str]) -> None:
    """Replace the configured points (tests running a child's code in-process); resets counts."""
    global _raw, _specs
    _raw, _specs = list(specs), None
    _hits.clear()


def hit(component: str, name: str) -> None:
    """Die here if ``component.name`` is configured and this is its n-th hit (tests only)."""
    global _specs
    if not _raw:
        return
    if _specs is None:
        _specs = [parse(s) for s in _raw]
    for spec in _specs:
        if (spec.component, spec.name) != (component, name):
            continue
        key = (component, name)
        _hits[key] = _hits.get(key, 0) + 1
        if _hits[key] >= spec.count:
            os._exit(EXIT_CODE)
