"""``drlab machine properties`` (deploy/cli_machine_props.py): parsing and the PATCH body (pure)."""

from __future__ import annotations

import pytest

from deploy.cli import build_parser
from deploy.cli_machine_props import body_of, cmd_properties, lines


def test_options_make_the_patch_body() -> None:
    args = build_parser().parse_args(["machine", "properties", "m1", "--target-name", "web-01",
                                      "--target-size", "Standard_A2", "--clear", "target_network"])
    assert args.func is cmd_properties and args.machine_id == "m1"
    assert body_of(args) == {"target_name": "web-01", "target_size": "Standard_A2", "target_network": None}
    assert body_of(build_parser().parse_args(["machine", "properties", "m1"])) == {}  # show only
    with pytest.raises(SystemExit):
        build_parser().parse_args(["machine", "properties", "m1", "--clear", "target_os"])


def test_lines_show_unset_as_a_dash() -> None:
    out = lines({"machine_id": "ab" * 16, "target_name": "web-01", "target_size": None, "target_network": None})
    assert out[0] == f"machine {'ab' * 16}" and "web-01" in out[1] and out[2].split() == ["target_size", "-"]
