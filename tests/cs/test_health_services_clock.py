"""The health rules of point 6 of issue 7 alone (pure): a PS service not running raises the
``ps_services_not_running`` warning naming it and clears when all run again; a component's clock
skew (measured by cs/health/clock.py) beyond ``clock_skew_threshold_s`` raises ``clock_skew`` for
a PS, an MT and an agent, and clears below; components that do not report either change nothing."""

from __future__ import annotations

from typing import Any

import pytest
from test_health_rules import Sim

from common import errors
from common.config import ConfigError, HealthConfig
from cs.health import clock, rules

S = 10**9
RUNNING = {"ingest": "running", "uploader": "running", "control": "running", "discovery": "running",
           "push_install": "running"}


def test_a_stopped_service_raises_a_warning_naming_it_and_clears_when_all_run() -> None:
    sim = Sim("ps")
    k = (rules.PS_SERVICES, None)
    assert sim.at(0, {"services": RUNNING}) == {}
    assert sim.at(10, {"services": {**RUNNING, "uploader": "stopped", "discovery": "stopped"}}) == {k: "warning"}
    verdict = rules.evaluate(sim.cfg, rules.Subject("ps", {"services": {**RUNNING, "uploader": "stopped"}},
                                                    0, 20 * S, 20 * S))
    [obs] = [o for o in verdict.observations if o.code == rules.PS_SERVICES]
    assert obs.message == "services not running on the process server: uploader"
    assert sim.at(20, {"services": RUNNING}) == {}
    assert [e[0] for e in sim.log] == ["raised", "cleared"]


@pytest.mark.parametrize("metrics", [{}, {"services": {}}, {"services": "running"}])
def test_a_ps_that_does_not_report_services_changes_nothing(metrics: dict[str, Any]) -> None:
    sim = Sim("ps")
    sim.at(0, {"services": {**RUNNING, "ingest": "stopped"}})
    assert sim.at(10, metrics) == {(rules.PS_SERVICES, None): "warning"}  # no verdict: the alert stays
    assert rules.PS_SERVICES not in rules.evaluate(sim.cfg, rules.Subject("ps", metrics, 0, 0, 0)).codes


@pytest.mark.parametrize("role", ["ps", "mt", "agent"])
def test_clock_skew_beyond_the_threshold_raises_and_clears_below(role: str) -> None:
    sim = Sim(role)
    k = (rules.CLOCK_SKEW, None)
    assert sim.at(0, {"clock_skew_s": 299.0}) == {}
    assert sim.at(10, {"clock_skew_s": -301.0}) == {k: "warning"}
    verdict = rules.evaluate(sim.cfg, rules.Subject(role, {"clock_skew_s": -400.0}, 0, 20 * S, 20 * S))
    [obs] = [o for o in verdict.observations if o.code == rules.CLOCK_SKEW]
    assert "400 s behind" in obs.message and "300 s" in obs.message
    assert sim.at(20, {"clock_skew_s": 1.5}) == {}
    assert sim.at(30, {}) == {}  # no clock reported: nothing said


def test_the_clock_skew_threshold_is_configurable() -> None:
    sim = Sim("agent", cfg=HealthConfig(clock_skew_threshold_s=5.0))
    assert sim.at(0, {"clock_skew_s": 6.0}) == {(rules.CLOCK_SKEW, None): "warning"}
    with pytest.raises(ConfigError):
        HealthConfig(clock_skew_threshold_s=-1.0)


def test_skew_is_corrected_by_half_the_round_trip() -> None:
    assert clock.skew_s(100 * S, 100 * S) == 0.0
    assert clock.skew_s(400 * S, 100 * S) == 300.0  # the component is 5 minutes ahead
    assert clock.skew_s(100 * S, 101 * S, rtt_ns=2 * S) == 0.0  # one second in transit
    metrics = clock.with_skew({"time_ns": 50 * S}, {"a": 1, "clock_skew_s": 9.0}, 100 * S)
    assert metrics == {"a": 1, "clock_skew_s": -50.0}
    assert clock.with_skew({}, {"clock_skew_s": 9.0}, 100 * S) == {}  # never the component's own claim
    for bad in ({"time_ns": "now"}, {"time_ns": -1}, {"time_ns": True}, {"time_ns": 1, "rtt_ns": 1.5}):
        with pytest.raises(errors.BadRequest):
            clock.with_skew(bad, {}, 100 * S)
