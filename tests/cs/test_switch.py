"""The pure PS switch / load balance planner (cs/switch.py)."""

from __future__ import annotations

import random

import pytest

from common import errors
from cs import switch
from cs.switch import DiskInfo, PsInfo, Request

A, B, C = "a" * 32, "b" * 32, "c" * 32
M1, M2, M3 = "1" * 32, "2" * 32, "3" * 32


def disk(n: int, machine: str, ps: str | None = A, state: str = "protected", gen: int = 1) -> DiskInfo:
    return DiskInfo(f"{n:032x}", machine, ps, state, gen)


FLEET = [disk(1, M1), disk(2, M1), disk(3, M2), disk(4, M3), disk(5, "4" * 32, B)]


def test_switch_moves_every_machine_of_the_ps_to_the_named_target_and_drains_when_alive() -> None:
    plan = switch.plan(Request(A, to_ps=B), FLEET, [PsInfo(A, True), PsInfo(B, True)])
    assert plan.mode == switch.DRAIN
    assert sorted(m.disk_id for m in plan.moves) == [f"{n:032x}" for n in (1, 2, 3, 4)]
    assert {m.to_ps for m in plan.moves} == {B} and {m.from_ps for m in plan.moves} == {A}


def test_a_dead_source_or_the_operators_word_regenerates() -> None:
    assert switch.plan(Request(A, to_ps=B), FLEET, [PsInfo(A, False), PsInfo(B, True)]).mode == switch.REGENERATE
    assert switch.plan(Request(A, to_ps=B, old_ps_dead=True), FLEET,
                       [PsInfo(A, True), PsInfo(B, True)]).mode == switch.REGENERATE


def test_balance_moves_only_the_machines_named_and_whole_machines() -> None:
    plan = switch.plan(Request(A, to_ps=B, machine_ids=(M1,)), FLEET, [PsInfo(A, True), PsInfo(B, True)])
    assert sorted(m.disk_id for m in plan.moves) == [f"{1:032x}", f"{2:032x}"]
    assert plan.targets() == {M1: B}


def test_without_a_target_machines_go_to_the_least_loaded_live_ps_by_churn_and_backlog() -> None:
    churn = {f"{1:032x}": 5e6, f"{2:032x}": 5e6, f"{3:032x}": 4e6, f"{4:032x}": 1e6, f"{5:032x}": 3e6}
    pss = [PsInfo(A, True), PsInfo(B, True), PsInfo(C, True)]
    plan = switch.plan(Request(A), FLEET, pss, churn)
    # M1 (10 MB/s) first, to C (idle); M2 (4 MB/s) to B (3 MB/s) -> B 7; M3 (1 MB/s) to C? C has 10: B (7) wins
    assert plan.targets() == {M1: C, M2: B, M3: B}
    backlog = [PsInfo(A, True), PsInfo(B, True, backlog_bytes=int(60 * 50e6)), PsInfo(C, True)]
    assert set(switch.plan(Request(A), FLEET, backlog, churn).targets().values()) == {C}


def test_dead_candidates_are_never_targets() -> None:
    plan = switch.plan(Request(A), FLEET, [PsInfo(A, True), PsInfo(B, False), PsInfo(C, True)])
    assert set(plan.targets().values()) == {C}
    with pytest.raises(errors.Conflict):
        switch.plan(Request(A, to_ps=B), FLEET, [PsInfo(A, True), PsInfo(B, False)])
    with pytest.raises(errors.Conflict):
        switch.plan(Request(A), FLEET, [PsInfo(A, True), PsInfo(B, False)])


@pytest.mark.parametrize("req, exc", [
    (Request("f" * 32, to_ps=B), errors.NotFound),
    (Request(A, to_ps="f" * 32), errors.NotFound),
    (Request(A, to_ps=A), errors.BadRequest),
    (Request(A, to_ps=B, machine_ids=("4" * 32,)), errors.Conflict),  # its disks are on B
    (Request(C, to_ps=B), errors.Conflict),  # C serves nothing
])
def test_impossible_requests_are_refused(req: Request, exc: type[errors.DrlabError]) -> None:
    with pytest.raises(exc):
        switch.plan(req, FLEET, [PsInfo(A, True), PsInfo(B, True), PsInfo(C, True)])


def test_a_machine_in_failover_stays_where_it_is() -> None:
    fleet = [*FLEET[:2], disk(3, M2, state="failed-over"), FLEET[3]]
    plan = switch.plan(Request(A, to_ps=B), fleet, [PsInfo(A, True), PsInfo(B, True)])
    assert f"{3:032x}" in plan.skipped and M2 not in plan.targets()
    with pytest.raises(errors.Conflict):
        switch.plan(Request(A, to_ps=B, machine_ids=(M2,)), fleet, [PsInfo(A, True), PsInfo(B, True)])


def test_the_plan_survives_its_json_round_trip() -> None:
    plan = switch.plan(Request(A, to_ps=B), FLEET, [PsInfo(A, True), PsInfo(B, True)])
    assert switch.Plan.from_dict(plan.as_dict()) == plan


def test_churn_from_two_counter_samples() -> None:
    assert switch.churn_between({"d": 100}, {"d": 1100, "e": 50}, 2.0) == {"d": 500.0, "e": 25.0}
    assert switch.churn_between({"d": 900}, {"d": 100}, 1.0) == {"d": 0.0}  # a restarted PS
    assert switch.churn_between({}, {"d": 1}, 0.0) == {}


def test_random_fleets_move_every_disk_of_the_chosen_machines_to_live_targets_only(seed: int) -> None:
    rng = random.Random(seed)
    pss = [PsInfo(f"{i:032x}", i == 0 or rng.random() < 0.8, rng.randrange(0, 1 << 30)) for i in range(5)]
    if not any(p.alive for p in pss[1:]):
        pss[1] = PsInfo(pss[1].ps_id, True)
    fleet = [DiskInfo(f"{n:032x}", f"{n % 7 + 100:032x}", pss[(n % 7) % 3].ps_id, "protected", 1) for n in range(40)]
    churn = {d.disk_id: rng.random() * 1e7 for d in fleet}
    plan = switch.plan(Request(pss[0].ps_id), fleet, pss, churn)
    alive = {p.ps_id for p in pss if p.alive} - {pss[0].ps_id}
    assert {m.disk_id for m in plan.moves} == {d.disk_id for d in fleet if d.ps_id == pss[0].ps_id}
    assert set(plan.targets().values()) <= alive
    for m in plan.moves:  # a machine's disks go together
        assert m.to_ps == plan.targets()[m.machine_id]
