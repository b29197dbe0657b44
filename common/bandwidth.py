"""Upload bandwidth limits: a per-PS limit in bytes/s with an optional time-of-day schedule, and
the token bucket that enforces it (pure: no I/O; the clock is passed in).

Rules:

- A limit of 0 bytes/s means no limit.
- A schedule is a list of windows ``{"from": "HH:MM", "to": "HH:MM", "bytes_per_s": N}`` in the
  PS's local time; ``from`` is inclusive, ``to`` exclusive; a window whose ``to`` is not after its
  ``from`` wraps past midnight (``22:00``-``06:00``). The first window that holds the time wins;
  outside every window the default limit applies.
- The bucket lets a sender go into debt: :meth:`TokenBucket.reserve` takes the bytes at once and
  says how long to wait before sending, so a batch larger than the burst still goes, and the
  long-run rate is the limit (the burst is at most ``burst_s`` seconds of the rate).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_WINDOWS = 24
MAX_BYTES_PER_S = 1 << 40
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)\Z")


def minute_of(text: Any, what: str) -> int:
    """Minutes after midnight of ``HH:MM`` (ValueError otherwise)."""
    match = _HHMM.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{what} must be a time of day HH:MM (00:00 to 23:59), not {str(text)[:16]!r}")
    return int(match.group(1)) * 60 + int(match.group(2))


def rate_of(value: Any, what: str) -> int:
    """A limit in bytes/s: an integer in [0, 2^40] (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BYTES_PER_S:
        raise ValueError(f"{what} must be an integer number of bytes/s in [0, 2^40] (0: no limit)")
    return value


@dataclass(frozen=True)
class Window:
    start: int  # minutes after midnight, inclusive
    end: int  # minutes after midnight, exclusive; <= start: wraps past midnight
    bytes_per_s: int

    def holds(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def to_json(self) -> dict[str, Any]:
        return {"from": f"{self.start // 60:02d}:{self.start % 60:02d}",
                "to": f"{self.end // 60:02d}:{self.end % 60:02d}", "bytes_per_s": self.bytes_per_s}


@dataclass(frozen=True)
class Plan:
    """The default limit and the schedule's windows."""

    bytes_per_s: int = 0
    windows: tuple[Window, ...] = ()

    def limit_at(self, minute: int) -> int:
        """The limit (bytes/s, 0: none) at ``minute`` after local midnight."""
        for window in self.windows:
            if window.holds(minute):
                return window.bytes_per_s
        return self.bytes_per_s

    def to_json(self) -> dict[str, Any]:
        return {"bytes_per_s": self.bytes_per_s, "windows": [w.to_json() for w in self.windows]}


def parse_windows(items: Any) -> tuple[Window, ...]:
    """Windows from their JSON form (ValueError naming the bad one)."""
    if not isinstance(items, list) or len(items) > MAX_WINDOWS:
        raise ValueError(f"windows must be a list of at most {MAX_WINDOWS} windows")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"from", "to", "bytes_per_s"}:
            raise ValueError(f"windows[{i}] must be an object with exactly from, to and bytes_per_s")
        start, end = minute_of(item["from"], f"windows[{i}].from"), minute_of(item["to"], f"windows[{i}].to")
        if start == end:
            raise ValueError(f"windows[{i}] is empty (from == to)")
        out.append(Window(start, end, rate_of(item["bytes_per_s"], f"windows[{i}].bytes_per_s")))
    return tuple(out)


def parse_plan(body: Any) -> Plan:
    """A plan from ``{"bytes_per_s": N, "windows": [...]?}`` (ValueError on anything else)."""
    if not isinstance(body, dict) or not set(body) <= {"bytes_per_s", "windows"} or "bytes_per_s" not in body:
        raise ValueError("a bandwidth setting is {bytes_per_s, windows?}")
    return Plan(rate_of(body["bytes_per_s"], "bytes_per_s"), parse_windows(body.get("windows", [])))


class TokenBucket:
    """Tokens are bytes; they refill at ``rate`` per second up to ``rate * burst_s``."""

    def __init__(self, clock: Callable[[], float], *, rate: int = 0, burst_s: float = 0.05) -> None:
        self._clock = clock
        self._burst_s = burst_s
        self.rate = 0
        self._tokens = 0.0
        self._last = clock()
        self.set_rate(rate)

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate})"

    def _refill(self, now: float) -> None:
        if self.rate > 0:
            self._tokens = min(self.rate * self._burst_s, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def set_rate(self, rate: int) -> None:
        """A new rate from now on (0: unlimited, and any debt is forgiven)."""
        if rate == self.rate:
            return
        self._refill(self._clock())
        self.rate = max(0, rate)
        self._tokens = 0.0 if self.rate == 0 else min(self._tokens, self.rate * self._burst_s)

    def reserve(self, n: int) -> float:
        """Take ``n`` bytes now; the seconds to wait before sending them (0: at once)."""
        if self.rate <= 0:
            return 0.0
        self._refill(self._clock())
        self._tokens -= n
        return max(0.0, -self._tokens / self.rate)
