"""`drlab failover ... --image`, `drlab machine test-failover|failover|planned-failover|change-point
... --image` and `drlab plan failover ... --image` ask for the image files (``"image": true``);
without the flag the body has no ``image`` (a failover is done at its view); the ops that make no
view take no --image."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from deploy import cli

MID = "ab" * 16


class FakeApi:
    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.posts.append((path, body))
        return {"job_id": "cd" * 16}

    async def get(self, path: str) -> dict[str, Any]:
        return {"job_id": "cd" * 16, "kind": "failover", "state": "succeeded", "result": {}, "steps": []}


def posted(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> tuple[str, dict[str, Any]]:
    api = FakeApi()

    def admin_api(_args: Any, fn: Callable[[Any], Any]) -> Any:
        return asyncio.run(fn(api))

    monkeypatch.setattr(cli, "_admin_api", admin_api)
    args = cli.build_parser().parse_args(argv)
    assert args.func(args) == 0
    (post,) = api.posts
    return post


def test_disk_and_machine_failover_ask_for_the_image_only_with_the_flag(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert posted(monkeypatch, ["failover", "ef" * 16]) == (f"/v1/disks/{'ef' * 16}/failover", {"point": "latest"})
    assert posted(monkeypatch, ["failover", "ef" * 16, "--image", "--point", "latest-processed"]) == (
        f"/v1/disks/{'ef' * 16}/failover", {"point": "latest-processed", "image": True})
    assert posted(monkeypatch, ["failover", "--machine", MID, "--wnum", "7", "--image"]) == (
        f"/v1/machines/{MID}/failover", {"point": {"wnum": 7}, "image": True})


@pytest.mark.parametrize(("argv", "path", "body"), [
    (["machine", "test-failover", MID, "--image"], f"/v1/machines/{MID}/test-failover",
     {"point": "latest", "image": True}),
    (["machine", "test-failover", MID], f"/v1/machines/{MID}/test-failover", {"point": "latest"}),
    (["machine", "failover", MID, "--image"], f"/v1/machines/{MID}/failover",
     {"point": "latest", "mode": "unplanned", "image": True}),
    (["machine", "planned-failover", MID, "--image"], f"/v1/machines/{MID}/planned-failover", {"image": True}),
    (["machine", "change-point", MID, "--wnum", "9", "--image"], f"/v1/machines/{MID}/change-point",
     {"point": {"wnum": 9}, "image": True}),
    (["machine", "commit", MID], f"/v1/machines/{MID}/commit", {}),
    (["plan", "failover", "dr", "--test", "--image"], "/v1/plans/dr/failover",
     {"mode": "test", "point": "latest", "image": True}),
    (["plan", "failover", "dr"], "/v1/plans/dr/failover", {"mode": "unplanned", "point": "latest"}),
])
def test_operations_carry_the_flag(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                   argv: list[str], path: str, body: dict[str, Any]) -> None:
    assert posted(monkeypatch, argv) == (path, body)


@pytest.mark.parametrize("op", ["commit", "cleanup"])
def test_ops_that_make_no_view_take_no_image_flag(op: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["machine", op, MID, "--image"])
    assert "unrecognized arguments: --image" in capsys.readouterr().err
