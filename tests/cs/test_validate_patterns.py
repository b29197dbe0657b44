"""cs/validate.py: an id, a name or an address followed by a newline is refused (a pattern ending
in ``$`` also matches before a final newline; they end in ``\\Z``)."""

from __future__ import annotations

import pytest

from common import errors
from cs import validate


@pytest.mark.parametrize("value", ["a" * 32 + "\n", "A" * 32, "a" * 31])
def test_a_hex_id_is_exactly_32_lowercase_hex(value: str) -> None:
    with pytest.raises(errors.BadRequest):
        validate.hex_id(value, "disk_id")
    assert validate.hex_id("a" * 32, "disk_id") == "a" * 32


@pytest.mark.parametrize("value", ["ps1\n", "ps1\nevil", "host.example\n"])
def test_an_address_with_a_newline_is_refused(value: str) -> None:
    with pytest.raises(errors.BadRequest):
        validate.address({"address": value})
    assert validate.address({"address": "host.example"}) == "host.example"


def test_a_port_name_with_a_newline_is_refused() -> None:
    with pytest.raises(errors.BadRequest):
        validate.ports({"ports": {"data\n": 9443}})
    assert validate.ports({"ports": {"data": 9443}}) == {"data": 9443}
