"""Host load for heartbeats, from /proc (Linux): CPU busy share since the previous sample, memory
in use, and a small rate meter (bytes per second between two readings of a counter).

Parsing is pure (:func:`cpu_times`, :func:`mem_pct`, :meth:`CpuSampler.feed`); reading /proc is
one small file each. Where /proc is missing the values are None and the CS's rules say nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")


def cpu_times(stat_text: str) -> tuple[int, int] | None:
    """(busy, total) jiffies from the ``cpu`` line of /proc/stat (idle and iowait are not busy)."""
    for line in stat_text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = [int(v) for v in parts[1:9] if v.isdigit()]
            if len(values) < 4:
                return None
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            return sum(values) - idle, sum(values)
    return None


def mem_pct(meminfo_text: str) -> float | None:
    """Memory in use, % of MemTotal (MemAvailable counts as free), from /proc/meminfo."""
    fields: dict[str, int] = {}
    for line in meminfo_text.splitlines():
        name, _, rest = line.partition(":")
        value = rest.split()
        if value and value[0].isdigit():
            fields[name.strip()] = int(value[0])
    total, available = fields.get("MemTotal"), fields.get("MemAvailable")
    if not total or available is None:
        return None
    return round(100.0 * (total - min(available, total)) / total, 2)


@dataclass
class CpuSampler:
    """CPU busy % between two samples (the first sample reports the average since boot)."""

    _prev: tuple[int, int] = (0, 0)

    def feed(self, times: tuple[int, int]) -> float:
        busy, total = times[0] - self._prev[0], times[1] - self._prev[1]
        self._prev = times
        return round(100.0 * busy / total, 2) if total > 0 else 0.0

    def sample(self, proc: Path = PROC) -> float | None:
        try:
            times = cpu_times((proc / "stat").read_text())
        except OSError:
            return None
        return self.feed(times) if times is not None else None


def read_mem_pct(proc: Path = PROC) -> float | None:
    try:
        return mem_pct((proc / "meminfo").read_text())
    except OSError:
        return None


@dataclass
class RateMeter:
    """Per key, the rate of a growing counter between two readings (0 on the first one)."""

    _prev: dict[str, tuple[float, int]] = field(default_factory=dict)

    def rate(self, key: str, counter: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        prev = self._prev.get(key)
        self._prev[key] = (now, counter)
        if prev is None or now <= prev[0] or counter < prev[1]:
            return 0.0
        return (counter - prev[1]) / (now - prev[0])
