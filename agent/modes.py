"""When a disk's tracker changes mode (pure: the caller passes the measurements and the time).

Down, as soon as the cause is real:
- DATA -> METADATA when the machine's held bytes (tracker data + batches not yet durable at the
  PS) pass the memory bound, or when the disk's PS answered 507 (throttled) recently;
- METADATA -> BITMAP when the regions waiting to be read back pass ``metadata_max_bytes``
  (the PS keeps throttling, or the uplink is slower than the churn).
Up, only once drained:
- BITMAP -> METADATA when a cut emptied the bitmap;
- METADATA -> DATA when nothing is waiting to be read back, no 507 came for twice ``calm_s``
  (reading back resumes after ``calm_s``: the disk stays a while in metadata mode first) and the
  held bytes are under half the bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.tracker import TrackMode


@dataclass(frozen=True)
class ModePolicy:
    memory_bytes: int
    metadata_max_bytes: int
    calm_s: float = 2.0


@dataclass(frozen=True)
class Measure:
    mode: TrackMode
    held_bytes: int  # machine-wide: tracker data + unacked batch bytes
    metadata_bytes: int  # this disk: regions waiting to be read back
    bitmap_bytes: int  # this disk: dirty bitmap bytes
    since_throttle_s: float  # seconds since this disk's last 507 (inf if never)


def next_mode(policy: ModePolicy, m: Measure) -> tuple[TrackMode, str]:
    """(the mode to be in, why) — the same mode and "" when nothing changes."""
    throttled = m.since_throttle_s < policy.calm_s
    if m.mode is TrackMode.DATA:
        if throttled:
            return TrackMode.METADATA, "ps-throttled"
        if m.held_bytes > policy.memory_bytes:
            return TrackMode.METADATA, "memory-bound"
    elif m.mode is TrackMode.METADATA:
        if m.metadata_bytes > policy.metadata_max_bytes:
            return TrackMode.BITMAP, "metadata-bound"
        calm = m.since_throttle_s >= 2 * policy.calm_s  # climb back slower than reading resumes
        if calm and m.metadata_bytes == 0 and m.held_bytes < policy.memory_bytes // 2:
            return TrackMode.DATA, "drained"
    elif m.bitmap_bytes == 0:
        return TrackMode.METADATA, "bitmap-drained"
    return m.mode, ""
