"""`drlab machine image MACHINE [--wait]` posts ``{}`` to ``/v1/machines/{id}/image`` (the image
files of its failover's views, cs/machine_image.py); it takes no point and no --image; with --wait
it follows the job and shows each disk's image path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from deploy import cli

MID = "ab" * 16
JOB = "cd" * 16
DISK = "ef" * 16


class FakeApi:
    def __init__(self, state: str = "succeeded") -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.state = state

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.posts.append((path, body))
        return {"job_id": JOB}

    async def get(self, path: str, **_: Any) -> dict[str, Any]:
        assert path == f"/v1/jobs/{JOB}"
        return {"job_id": JOB, "kind": "machine-image", "state": self.state, "percent": 100.0,
                "error": None if self.state == "succeeded" else "disk x: view-image failed: no view",
                "steps": [{"name": "images written", "percent": 95.0, "detail": "1 image(s)"}],
                "result": {"machine_id": MID, "mode": "test", "wnum": 7, "disks": [
                    {"disk_id": DISK, "view": "v", "job_id": "j", "image_path": "/data/failover/x.img"}]}}


def run(monkeypatch: pytest.MonkeyPatch, argv: list[str], api: FakeApi) -> int:
    def admin_api(_args: Any, fn: Callable[[Any], Any]) -> Any:
        return asyncio.run(fn(api))

    monkeypatch.setattr(cli, "_admin_api", admin_api)
    args = cli.build_parser().parse_args(argv)
    return int(args.func(args))


def test_image_posts_an_empty_body_and_prints_the_job(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApi()
    assert run(monkeypatch, ["machine", "image", MID], api) == 0
    assert api.posts == [(f"/v1/machines/{MID}/image", {})]
    assert capsys.readouterr().out.strip() == JOB


def test_image_wait_follows_the_job_and_shows_the_paths(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(monkeypatch, ["machine", "image", MID, "--wait", "--timeout-s", "5"], FakeApi()) == 0
    out = capsys.readouterr().out
    assert "/data/failover/x.img" in out and "succeeded" in out
    assert run(monkeypatch, ["machine", "image", MID, "--wait", "--timeout-s", "5"], FakeApi("failed")) == 1


@pytest.mark.parametrize("extra", [["--image"], ["--point", "latest"], ["--wnum", "3"]])
def test_image_takes_no_point_and_no_image_flag(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["machine", "image", MID, *extra])
    assert "unrecognized arguments" in capsys.readouterr().err
