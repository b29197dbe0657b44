"""Detecting a PS that lost batches it had acknowledged (pure).

The PS's status answer says how far the MT received this generation (``mt_received``,
contiguous) and the lowest seq of it the PS still holds (``held_from``, 0 for none). When the
agent had an ack for seq ``mt_received + 1`` but neither the MT nor the PS has it, the PS lost
it (killed with its cache, or its cache deleted): the agent must re-send those regions under a
new generation. One observation could race with an upload in progress, so the loss must be seen
twice, ``confirm_s`` apart, with ``mt_received`` unchanged.

After a PS switch in the same generation (a drain: the old PS still uploads what it cached),
this PS answers only for the seqs from ``floor`` on (the first seq it was sent): a gap below
``floor`` is the old PS's to fill, and the CS's switch job watches that drain, not the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class LossDetector:
    confirm_s: float = 1.0
    floor: int = 1  # the first seq this PS is answerable for
    _suspect_since: float | None = None
    _suspect_at: int = -1
    reported: bool = False

    def observe(self, status: dict[str, Any], acked_seq: int, now: float) -> bool:
        """Feed one status answer; True exactly once, when a loss is confirmed."""
        if self.reported or "held_from" not in status:
            return False
        received = int(status.get("mt_received", 0))
        held_from = int(status.get("held_from", 0))
        missing = acked_seq > received and (held_from == 0 or held_from > received + 1) \
            and received + 1 >= self.floor
        if not missing:
            self._suspect_since, self._suspect_at = None, -1
            return False
        if self._suspect_since is None or self._suspect_at != received:
            self._suspect_since, self._suspect_at = now, received
            return False
        if now - self._suspect_since >= self.confirm_s:
            self.reported = True
            return True
        return False
