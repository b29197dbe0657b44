"""The MT apply health rules alone (pure): a disk whose last 3 or more applies failed raises the
``mt_apply_failing`` warning, cleared once an apply succeeds (the count back to 0); a disk whose
applying stopped until a restart raises ``mt_apply_stopped`` (critical, with the reason), cleared
when the MT reports it applying again; an MT that does not report them changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from test_health_rules import DISK1, DISK2, Sim

from common.config import HealthConfig
from cs.health import rules

S = 10**9


def mt(**disks: dict[str, Any]) -> dict[str, Any]:
    return {"disks": {d: {"mt_applied": 1, "apply_failures": 0, "apply_stopped": None, **v} for d, v in disks.items()}}


def observation(metrics: dict[str, Any], code: str, disk_id: str) -> rules.Observation:
    verdict = rules.evaluate(HealthConfig(), rules.Subject("mt", metrics, 0, S, S))
    [obs] = [o for o in verdict.observations if o.key == (code, disk_id)]
    return obs


def test_three_failed_applies_in_a_row_warn_and_a_successful_apply_clears() -> None:
    sim = Sim("mt")
    k = (rules.MT_APPLY_FAILING, DISK1)
    assert sim.at(0, mt(**{DISK1: {}, DISK2: {}})) == {}
    assert sim.at(1, mt(**{DISK1: {"apply_failures": 2}, DISK2: {}})) == {}  # under N: a transient error
    assert sim.at(2, mt(**{DISK1: {"apply_failures": 3}, DISK2: {}})) == {k: "warning"}
    assert sim.at(3, mt(**{DISK1: {"apply_failures": 7}, DISK2: {}})) == {k: "warning"}
    assert sim.at(4, mt(**{DISK1: {}, DISK2: {}})) == {}
    assert sim.log == [("raised", rules.MT_APPLY_FAILING, DISK1, "warning"),
                       ("cleared", rules.MT_APPLY_FAILING, DISK1, "warning")]
    message = observation(mt(**{DISK1: {"apply_failures": 4}}), rules.MT_APPLY_FAILING, DISK1).message
    assert f"disk {DISK1} 4 times in a row" in message and "alert at 3" in message


def test_stopped_applying_is_critical_with_its_reason_and_clears_after_a_restart() -> None:
    sim = Sim("mt")
    reason = "an apply that failed could not be rolled back ([Errno 28] No space left on device)"
    stopped = mt(**{DISK1: {}, DISK2: {"apply_stopped": reason, "apply_failures": 5}})
    assert sim.at(0, stopped) == {(rules.MT_APPLY_STOPPED, DISK2): "critical",
                                  (rules.MT_APPLY_FAILING, DISK2): "warning"}
    message = observation(stopped, rules.MT_APPLY_STOPPED, DISK2).message
    assert reason in message and "restart the master target" in message
    assert sim.at(10, stopped) == {(rules.MT_APPLY_STOPPED, DISK2): "critical",
                                   (rules.MT_APPLY_FAILING, DISK2): "warning"}
    assert sim.at(20, mt(**{DISK1: {}, DISK2: {}})) == {}  # restarted: applying again
    assert ("cleared", rules.MT_APPLY_STOPPED, DISK2, "critical") in sim.log


def test_a_released_disk_clears_its_alerts() -> None:
    sim = Sim("mt")
    sim.at(0, mt(**{DISK1: {"apply_failures": 3, "apply_stopped": "x"}, DISK2: {}}))
    assert sim.at(1, mt(**{DISK2: {}})) == {}


@pytest.mark.parametrize("metrics", [{}, {"disks": {}}, {"disks": {DISK1: {"mt_applied": 1}}}, {"disks": "x"}])
def test_an_mt_that_does_not_report_applies_changes_nothing(metrics: dict[str, Any]) -> None:
    sim = Sim("mt")
    sim.at(0, mt(**{DISK1: {"apply_failures": 9, "apply_stopped": "x"}}))
    assert sim.at(1, metrics) == {(rules.MT_APPLY_FAILING, DISK1): "warning",
                                  (rules.MT_APPLY_STOPPED, DISK1): "critical"}


@pytest.mark.parametrize("disks", [{"not-a-disk": {"apply_failures": 9, "apply_stopped": "x"}},
                                   {DISK1: {"apply_failures": True, "apply_stopped": 1}},
                                   {DISK1: {"apply_failures": "many", "apply_stopped": None}}])
def test_malformed_disks_raise_nothing(disks: dict[str, Any]) -> None:
    verdict = rules.evaluate(HealthConfig(), rules.Subject("mt", {"disks": disks}, 0, S, S))
    assert not any(o.code in (rules.MT_APPLY_FAILING, rules.MT_APPLY_STOPPED) and any(lv.holds for lv in o.levels)
                   for o in verdict.observations)
