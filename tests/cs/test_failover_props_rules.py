"""The failover-property validators (cs/failover_props.py), pure."""

from __future__ import annotations

from typing import Any

import pytest

from common import errors
from cs import failover_props as fp


@pytest.mark.parametrize("name", ["a", "A", "7", "web-01", "a" * 63, "a" + "-" * 61 + "b", "Z9-x-Y"])
def test_good_target_names(name: str) -> None:
    assert fp.check_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 64, "-web", "web-", "-", "web_01", "web.01", "web 01", "wéb", "ｗeb",
                                  "web\n", "٣", None, 7, ["web"]])
def test_bad_target_names_say_the_rule(name: Any) -> None:
    with pytest.raises(errors.BadRequest) as exc:
        fp.check_name(name)
    assert exc.value.message == fp.NAME_RULE
    assert "1-63 letters, digits and hyphens" in exc.value.message and "starting and ending" in exc.value.message


def test_sizes_and_networks() -> None:
    assert fp.check_size("Standard_A2") == "Standard_A2" and fp.check_size("Standard_D14") == "Standard_D14"
    for bad in ("standard_a2", "Standard_Z9", "", None, 2):
        with pytest.raises(errors.BadRequest, match="Standard_A1, Standard_A2"):
            fp.check_size(bad)
    for good in ("vnet-1", "ab", "corp.net_", "N" * 64):
        assert fp.check_network(good) == good
    for bad in ("", "a", "N" * 65, "-net", "net-", "net.", "ne t", "nét", None):
        with pytest.raises(errors.BadRequest, match="target_network must be 2-64"):
            fp.check_network(bad)


def test_parse_checks_every_field_before_any() -> None:
    assert fp.parse({"target_name": "web1", "target_size": None}) == {"target_name": "web1", "target_size": None}
    with pytest.raises(errors.BadRequest, match="unknown field 'target_os'"):
        fp.parse({"target_name": "web1", "target_os": "linux"})
    with pytest.raises(errors.BadRequest, match="at least one"):
        fp.parse({})
    with pytest.raises(errors.BadRequest, match="target_size must be one of"):
        fp.parse({"target_name": "web1", "target_size": "huge"})
    assert fp.target({"target_name": "web1"}) == {"name": "web1", "size": None, "network": None}
