"""Retention of one disk's undo journal: which whole oldest segments to prune (pure: no I/O).

The rule. Point P (a batch) is valid while the undo records of every batch after P are kept:
rolling the replica back to P writes them back, newest first (mt/failover.py, mt/view.py). Undo
records live in segments, a batch never spans two, and segments are removed whole, oldest first.
Removing segments ``..k`` (every segment numbered k or lower) therefore removes the undo records
of every batch in them, which invalidates exactly the points with a later batch in a removed
segment: every point in ``..k`` except the newest one there (the *boundary*). The boundary stays
valid (every batch after it is in a kept segment) and stays listed even though its own commit
record goes with its segment (mt/journal.py keeps its key in the ``floor`` marker); every later
point stays valid. Undo records of the oldest listed point are never needed, so nothing older
than the boundary is lost that was still usable.

What may go: a prefix of the segments that stops before the segment being appended and before
the oldest segment some owner pins (a failover view: it reads the undo records of the batches
after its point). Within that prefix:

* by window: the segments whose newest point is older than ``now - window`` (every point in them
  is outside the policy's window, and the boundary still covers the window's start);
* on low space with action ``prune``: further oldest segments, even inside the window, until
  the freed bytes reach what is needed (``need_bytes``);
* on low space with action ``pause``, or ``prune`` when pins and the current segment leave too
  little to free: applying pauses (batches stay staged, nothing is lost) until space returns.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("prune", "pause")
NS = 1_000_000_000


@dataclass(frozen=True)
class Segment:
    segno: int
    newest_t_ns: int | None  # t_last_ns of its newest point (None: it holds no point)
    size_bytes: int


@dataclass(frozen=True)
class Facts:
    """One disk's journal and the retention volume at ``now_ns``."""

    segments: tuple[Segment, ...]  # oldest first
    current: int  # the segment being appended
    pinned_from: int | None  # the oldest pinned segment (None: nothing is pinned)
    now_ns: int
    window_s: int  # 0: no window (keep every point while space lasts)
    need_bytes: int = 0  # > 0: the volume is low on space, free this much to recover
    action: str = "prune"  # what low space does: "prune" or "pause"


@dataclass(frozen=True)
class Decision:
    prune: tuple[int, ...]  # segments to remove, oldest first (a prefix of the journal)
    by_window: int  # how many of them the window alone removes
    by_space: int  # how many more low space removes
    pause: bool  # low space and not (enough) pruned: stop applying
    freed_bytes: int

    @property
    def through(self) -> int | None:
        """The newest segment removed (None: none)."""
        return self.prune[-1] if self.prune else None


def prunable(facts: Facts) -> list[Segment]:
    """The segments that may go at all: the oldest ones before the current and pinned segments."""
    out = []
    for seg in facts.segments:
        if seg.segno >= facts.current or (facts.pinned_from is not None and seg.segno >= facts.pinned_from):
            break
        out.append(seg)
    return out


def outside_window(seg: Segment, facts: Facts) -> bool:
    if facts.window_s <= 0:
        return False
    return seg.newest_t_ns is None or seg.newest_t_ns < facts.now_ns - facts.window_s * NS


def decide(facts: Facts) -> Decision:
    """The module's rule: window first, then low space by the action."""
    if facts.action not in ACTIONS:
        raise ValueError(f"low-space action must be one of {ACTIONS}")
    candidates = prunable(facts)
    by_window = 0
    while by_window < len(candidates) and outside_window(candidates[by_window], facts):
        by_window += 1
    chosen = candidates[:by_window]
    freed = sum(s.size_bytes for s in chosen)
    by_space = 0
    if facts.action == "prune":
        for seg in candidates[by_window:]:
            if freed >= facts.need_bytes:
                break
            chosen.append(seg)
            freed += seg.size_bytes
            by_space += 1
    pause = facts.need_bytes > 0 and freed < facts.need_bytes
    return Decision(tuple(s.segno for s in chosen), by_window, by_space, pause, freed)


def need_bytes(free_bytes: int, total_bytes: int, low_pct: float, resume_pct: float, paused: bool) -> int:
    """Bytes to free: 0 while free space is at or above ``low_pct`` % of the volume (or, once
    paused, ``resume_pct`` %); otherwise what brings it back to ``resume_pct`` %."""
    target = int(total_bytes * resume_pct / 100.0)
    low = int(total_bytes * (resume_pct if paused else low_pct) / 100.0)
    if free_bytes >= low:
        return 0
    return max(1, target - free_bytes)
