"""The two-phase bookmark protocol's pure core (cs/bookmarks_core.py: Run), without a database."""

from __future__ import annotations

import pytest

from common import errors
from cs.bookmarks_core import Member, Report, Run

A, B = "a1" * 16, "b2" * 16
DA, DB = "da" * 16, "db" * 16
S1, S2 = "51" * 16, "52" * 16
T = 10**9


def new_run(timeout_s: float = 5.0) -> Run:
    return Run(state="preparing", deadline_ns=int(timeout_s * T), timeout_ns=int(timeout_s * T),
               members={A: Member(), B: Member()})


def frozen(session: str = S1) -> Report:
    return Report("frozen", session)


def tagged(disk: str, session: str = S1) -> Report:
    return Report("tagged", session, {disk: (1, 7)}, freeze_ms=3.5)


def test_commit_needs_every_member_frozen_then_every_member_tagged() -> None:
    run = new_run()
    assert run.phase_for(A, 0) == run.phase_for(B, 0) == "prepare"
    assert run.report(A, frozen(), 1 * T, {DA})
    assert run.state == "preparing" and run.phase_for(A, T) == "prepare"  # still waiting for B
    assert not run.report(A, frozen(), 2 * T, {DA})  # a retry changes nothing
    assert run.report(B, frozen(S2), 3 * T, {DB})
    assert (run.state, run.decided_ns) == ("committing", 3 * T)
    assert run.phase_for(A, 3 * T) == run.phase_for(B, 3 * T) == "commit"
    assert run.report(A, tagged(DA), 4 * T, {DA})
    assert run.state == "committing" and run.phases(4 * T) == {A: "commit", B: "commit"}  # no document changed
    assert run.report(B, tagged(DB, S2), 4 * T, {DB})
    assert (run.state, run.finished_ns, run.reason) == ("committed", 4 * T, None)
    assert run.phases(4 * T) == {A: None, B: None}
    assert run.members[B].points == {DB: [1, 7]} and run.members[B].freeze_ms == 3.5
    assert not run.report(B, tagged(DB, S2), 5 * T, {DB})  # retry
    with pytest.raises(errors.Conflict):
        run.report(B, Report("failed", error="late"), 5 * T, {DB})


def test_a_member_not_frozen_by_the_deadline_aborts_with_the_reason() -> None:
    run = new_run(timeout_s=2)
    run.report(A, frozen(), T, {DA})
    assert not run.expire(2 * T)  # not past the deadline yet
    assert run.expire(2 * T + 1)
    assert run.state == "aborted" and run.reason == f"timeout: {B} did not freeze within 2 s"
    assert run.phase_for(A, 3 * T) == "abort"  # A is frozen: it must thaw
    assert run.phase_for(A, 3 * T + 61 * T) is None  # after the linger, the agent's own deadline did it
    run.report(A, Report("thawed", S1, error="bookmark aborted", freeze_ms=2000.0), 3 * T, {DA})
    assert run.phase_for(A, 3 * T) is None and run.state == "aborted"


def test_frozen_after_the_deadline_aborts() -> None:
    run = new_run(timeout_s=2)
    run.report(A, frozen(), T, {DA})
    run.report(B, frozen(S2), 3 * T, {DB})
    assert run.state == "aborted" and "froze after the deadline" in (run.reason or "")


@pytest.mark.parametrize("state", ["failed", "expired", "thawed"])
def test_a_member_failing_aborts_and_no_one_may_tag(state: str) -> None:
    run = new_run()
    run.report(A, frozen(), T, {DA})
    run.report(B, Report(state, error="pre-freeze hook exited with status 3"), T, {DB})
    assert run.state == "aborted" and f"{B} {state}: pre-freeze hook" in (run.reason or "")
    with pytest.raises(errors.Conflict):
        run.report(B, tagged(DB), 2 * T, {DB})  # B never froze


def test_tag_before_the_decision_is_refused() -> None:
    run = new_run()
    run.report(A, frozen(), T, {DA})
    with pytest.raises(errors.Conflict):
        run.report(A, tagged(DA), T, {DA})
    assert run.state == "preparing"


def test_a_new_freeze_after_the_decision_aborts() -> None:
    """A member that thawed (e.g. restarted) and froze again after the decision could tag a cut holding
    writes caused by another member's post-commit writes: the bookmark aborts."""
    run = new_run()
    run.report(A, frozen(S1), T, {DA})
    run.report(B, frozen(S2), T, {DB})
    assert run.state == "committing"
    run.report(A, frozen("53" * 16), 2 * T, {DA})
    assert run.state == "aborted" and "froze again" in (run.reason or "")


def test_tagged_in_another_session_or_missing_a_disk_aborts() -> None:
    run = new_run()
    run.report(A, frozen(S1), T, {DA})
    run.report(B, frozen(S2), T, {DB})
    run.report(A, tagged(DA, session="54" * 16), 2 * T, {DA})
    assert run.state == "aborted" and "another freeze" in (run.reason or "")

    run = new_run()
    run.report(A, frozen(S1), T, {DA})
    run.report(B, frozen(S2), T, {DB})
    run.report(A, tagged(DA), 2 * T, {DA, "dc" * 16})
    assert run.state == "aborted" and "did not tag disks" in (run.reason or "")


def test_members_that_do_not_report_their_tags_abort_after_the_timeout() -> None:
    run = new_run(timeout_s=1)
    run.report(A, frozen(), T // 2, {DA})
    run.report(B, frozen(S2), T // 2, {DB})
    run.report(A, tagged(DA), T, {DA})
    assert not run.expire(T // 2 + T)
    assert run.expire(T // 2 + T + 1)
    assert run.state == "aborted" and run.reason == f"timeout: {B} did not report their tags within 1 s"
    # B tags after all: recorded, the bookmark stays aborted
    assert run.report(B, tagged(DB, S2), 2 * T, {DB}) and run.state == "aborted"


def test_single_member_commits_alone() -> None:
    run = Run(state="preparing", deadline_ns=5 * T, timeout_ns=5 * T, members={A: Member()})
    run.report(A, frozen(), T, {DA})
    assert run.state == "committing"
    run.report(A, tagged(DA), T, {DA})
    assert run.state == "committed"
