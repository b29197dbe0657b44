"""`drlab plan failover NAME [--test|--planned]` and `drlab plan commit NAME` (deploy/cli_ops.py): the
request each sends; a planned failover takes no point and excludes --test (refused before any request)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from common import errors
from deploy import cli
from tests.deploy.test_cli_failover_image import FakeApi


def posts(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> list[tuple[str, dict[str, Any]]]:
    api = FakeApi()

    def admin_api(_args: Any, fn: Callable[[Any], Any]) -> Any:
        return asyncio.run(fn(api))

    monkeypatch.setattr(cli, "_admin_api", admin_api)
    args = cli.build_parser().parse_args(argv)
    try:
        assert args.func(args) == 0
    except errors.BadRequest:
        assert api.posts == []
        raise
    return api.posts


@pytest.mark.parametrize(("argv", "path", "body"), [
    (["plan", "failover", "dr", "--planned"], "/v1/plans/dr/failover", {"mode": "planned"}),
    (["plan", "failover", "dr", "--planned", "--image"], "/v1/plans/dr/failover", {"mode": "planned", "image": True}),
    (["plan", "failover", "dr"], "/v1/plans/dr/failover", {"mode": "unplanned", "point": "latest"}),
    (["plan", "failover", "dr", "--test", "--wnum", "7"], "/v1/plans/dr/failover",
     {"mode": "test", "point": {"wnum": 7}}),
    (["plan", "commit", "dr"], "/v1/plans/dr/commit", {}),
])
def test_plan_commands_send_their_request(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          argv: list[str], path: str, body: dict[str, Any]) -> None:
    assert posts(monkeypatch, argv) == [(path, body)]
    assert "cd" * 16 in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "why"), [
    (["plan", "failover", "dr", "--planned", "--test"], "exclude each other"),
    (["plan", "failover", "dr", "--planned", "--wnum", "7"], "takes no point"),
    (["plan", "failover", "dr", "--planned", "--point", "latest-processed"], "takes no point"),
])
def test_a_planned_plan_failover_with_a_point_or_test_is_refused(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                                                 why: str) -> None:
    with pytest.raises(errors.BadRequest, match=why):
        posts(monkeypatch, argv)
