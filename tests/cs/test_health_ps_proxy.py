"""The ``ps_upload_proxy`` health rule (pure): a PS whose uploads fail at its proxy (metrics
``uplink.proxy_error``, ps/uplink.py) raises a critical alert at once, naming the proxy and the
error, and clears when uploads get through again; a PS that does not report it changes nothing."""

from __future__ import annotations

from test_health_rules import Sim

from cs.health import rules

S = 10**9
OK = {"uplink": {"proxy": "http://10.0.0.9:3128", "proxy_error": None, "bytes_per_s": 0}}
FAILING = {"uplink": {**OK["uplink"], "proxy_error": "407, message='Proxy Authentication Required'"}}


def test_a_failing_proxy_raises_a_critical_alert_and_clears() -> None:
    sim = Sim("ps")
    k = (rules.PS_PROXY, None)
    assert sim.at(0, OK) == {}
    assert sim.at(10, FAILING) == {k: "critical"}
    verdict = rules.evaluate(sim.cfg, rules.Subject("ps", FAILING, 0, 20 * S, 20 * S))
    [obs] = [o for o in verdict.observations if o.code == rules.PS_PROXY]
    assert "http://10.0.0.9:3128" in obs.message and "407" in obs.message
    assert sim.at(20, OK) == {}
    assert rules.PS_PROXY not in rules.evaluate(sim.cfg, rules.Subject("ps", {}, 0, 0, 0)).codes
