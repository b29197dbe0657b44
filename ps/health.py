"""What the PS says about itself in its heartbeat beyond the cache (ps/service.py ``metrics``):
the state of its internal services, and rates averaged over the heartbeat window.

Services (the documented "services not running" check, cs/health/rules.py ``ps_services``):
each is a set of owned asyncio tasks that should run as long as the PS does. A service is
``running`` while none of its tasks has finished (a loop task never returns: a finished one
crashed or was cancelled) and ``stopped`` otherwise, or when the service object is gone.

Rates (:class:`RateMeter`): cumulative byte counters sampled at each heartbeat; the rate is the
growth since the previous sample over the time between them (bytes/s), 0 on the first sample.
A sample taken less than ``min_window_s`` after the previous one returns the previous rates
(a metrics call between two heartbeats does not shrink the window).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

RUNNING, STOPPED = "running", "stopped"


def task_state(tasks: Iterable[asyncio.Task[Any]] | None) -> str:
    """``stopped`` for a missing service or one with a finished task, else ``running``."""
    if tasks is None:
        return STOPPED
    return STOPPED if any(t.done() for t in tasks) else RUNNING


def owned_tasks(obj: Any, *attrs: str) -> list[asyncio.Task[Any]] | None:
    """The tasks an object owns under ``attrs`` (a task, or a dict / list of tasks); None for no object."""
    if obj is None:
        return None
    out: list[asyncio.Task[Any]] = []
    for attr in attrs:
        value = getattr(obj, attr, None)
        if isinstance(value, asyncio.Task):
            out.append(value)
        elif isinstance(value, dict):
            out.extend(t for t in value.values() if isinstance(t, asyncio.Task))
        elif isinstance(value, list | tuple):
            out.extend(t for t in value if isinstance(t, asyncio.Task))
    return out


def server_state(runner: Any) -> str:
    """The data socket's state: ``running`` while an aiohttp runner has a serving site."""
    if runner is None:
        return STOPPED
    servers = [getattr(site, "_server", None) for site in getattr(runner, "sites", ())]
    serving = [s for s in servers if s is not None and s.is_serving()]
    return RUNNING if serving else STOPPED


class RateMeter:
    """Rates of named cumulative counters, averaged between two samples (see the module docstring)."""

    def __init__(self, *, min_window_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._min_window_s = min_window_s
        self._last: tuple[float, dict[str, float]] | None = None
        self.rates: dict[str, float] = {}
        self.window_s = 0.0

    def __repr__(self) -> str:
        return f"RateMeter({len(self.rates)} rates over {self.window_s:.1f} s)"

    def sample(self, counters: Mapping[str, float]) -> dict[str, float]:
        """{name: bytes/s since the previous sample} for every name in ``counters``."""
        now = self._clock()
        if self._last is None:
            self._last = (now, dict(counters))
            self.rates = {name: 0.0 for name in counters}
            return dict(self.rates)
        then, before = self._last
        elapsed = now - then
        if elapsed < self._min_window_s:
            return {name: self.rates.get(name, 0.0) for name in counters}
        self.rates = {name: max(0.0, value - before.get(name, 0.0)) / elapsed for name, value in counters.items()}
        self.window_s = elapsed
        self._last = (now, dict(counters))
        return dict(self.rates)


def per_machine(received: Mapping[str, tuple[int, int]], machine_of: Callable[[str], str | None]) -> dict[str, float]:
    """{machine id: bytes received (cached) for its disks}; disks of no known machine are left out."""
    out: dict[str, float] = {}
    for disk_id, (_, nbytes) in received.items():
        machine = machine_of(disk_id)
        if machine:
            out[machine] = out.get(machine, 0.0) + nbytes
    return out
