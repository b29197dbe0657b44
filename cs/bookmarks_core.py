"""The pure core of the CS's two-phase bookmark protocol (ARCHITECTURE.md §3, docs/PROTOCOL.md):
:class:`Run`, a bookmark's state and the rules below, with no I/O and no clock (times are passed in).
Its shell over the database (requests, member reports, the deadline sweep, the agents' documents)
is cs/bookmarks.py.

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

from dataclasses import dataclass, field
from typing import Any

from common import errors

ACTIVE = ("preparing", "committing")
FINAL = ("committed", "aborted")
STATES = ACTIVE + FINAL
ABORT_LINGER_NS = 60 * 10**9  # members still frozen see phase ``abort`` this long after an abort


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
    """What a member says (parsed by :func:`cs.bookmarks.parse_report`)."""

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
