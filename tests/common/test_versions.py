"""common/versions.py (pure): semantic version order, malformed versions, the refusal of a component
newer than its CS and the upgrade-order advice (CS, then PS, then MT)."""

from __future__ import annotations

import pytest

from common import errors, versions


def test_versions_compare_number_by_number() -> None:
    ordered = ["0.1.0", "0.2.0", "0.10.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-rc.1",
               "1.0.0", "1.0.1", "1.10.0", "10.0.0"]
    parsed = [versions.parse(v) for v in ordered]
    assert parsed == sorted(reversed(parsed)) and len(set(parsed)) == len(parsed)
    assert versions.compare("0.1.0", "0.2.0") == -1 and versions.compare("0.10.0", "0.2.0") == 1
    assert versions.compare("1.2.3+build.7", "1.2.3") == 0  # build metadata is ignored


@pytest.mark.parametrize("bad", ["", "1", "1.2", "1.2.3.4", "01.2.3", "1.02.3", "v1.2.3", "1.2.3-", "1.2.3-a..b",
                                 "test", " 1.2.3", "1.2.3 ", "1" * 70 + ".0.0"])
def test_malformed_versions_are_bad_requests(bad: str) -> None:
    with pytest.raises(errors.BadRequest):
        versions.parse(bad)


def test_a_component_newer_than_its_cs_is_refused_with_both_versions_and_the_order() -> None:
    versions.check_not_newer("ps", "0.1.0", "0.1.0")
    versions.check_not_newer("mt", "0.0.9", "0.1.0")
    with pytest.raises(errors.Conflict) as caught:
        versions.check_not_newer("mt", "0.10.0", "0.2.0")
    assert caught.value.code == "component_newer_than_cs" and caught.value.status == 409
    assert "0.10.0" in caught.value.message and "0.2.0" in caught.value.message
    assert versions.ORDER_TEXT in caught.value.message
    with pytest.raises(errors.BadRequest):
        versions.check_not_newer("agent", "latest", "0.1.0")


def test_advice_follows_cs_then_ps_then_mt() -> None:
    assert versions.advice("0.2.0", {"p1": "0.2.0"}, {"m1": "0.2.0"}) == {}
    # the CS was upgraded: the PS goes next, the MT waits for the process servers
    out = versions.advice("0.2.0", {"p1": "0.1.0", "p2": "0.2.0"}, {"m1": "0.1.0"})
    assert out["p1"][0] == "version_mismatch" and "upgrade this process server to 0.2.0" in out["p1"][1]
    assert "p2" not in out
    assert out["m1"][0] == "version_mismatch" and "process servers to 0.2.0 first" in out["m1"][1]
    # an MT upgraded before a PS: out of order
    out = versions.advice("0.2.0", {"p1": "0.1.0"}, {"m1": "0.2.0"})
    assert out["m1"][0] == "upgrade_order" and "0.1.0" in out["m1"][1]
    # the process servers are done: the MT is next; a malformed (old) version counts as differing
    out = versions.advice("0.2.0", {"p1": "0.2.0"}, {"m1": "0.1.0", "m2": "test"})
    assert "upgrade this master target to 0.2.0 next" in out["m1"][1] and out["m2"][0] == "version_mismatch"
