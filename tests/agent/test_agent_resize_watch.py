"""The agent sees a disk file grown or shrunk and reports it (agent/resizewatch.py); the disk keeps
taking writes within its old size only (the smaller size once shrunk)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from agent.disk import DiskBoundsError, DiskImage
from agent.resizewatch import ResizeWatch, adopt, resized
from common import errors

SIZE = 1 << 20


class Reports:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail = False

    async def __call__(self, body: dict[str, Any]) -> None:
        if self.fail:
            raise errors.Unavailable("CS down")
        self.bodies.append(body)


def sizes(body: dict[str, Any]) -> dict[str, int]:
    return {d["name"]: d["size_bytes"] for d in body["disks"]}


@pytest.fixture
def disks(tmp_path: Path) -> Any:
    out = [DiskImage(tmp_path / "disk0.img", SIZE, "disk0"), DiskImage(tmp_path / "disk1.img", SIZE, "disk1")]
    yield out
    for d in out:
        d.close()


@pytest.mark.timeout(10)
async def test_a_grown_disk_is_reported_once_and_takes_no_write_past_its_old_size(disks: list[DiskImage]) -> None:
    reports = Reports()
    watch = ResizeWatch(disks, reports, 60.0)
    assert await watch.check() == {} and reports.bodies == []  # nothing changed: nothing sent
    os.truncate(disks[0].path, 2 * SIZE)
    assert resized(disks) == {"disk0": 2 * SIZE}
    assert await watch.check() == {"disk0": 2 * SIZE}
    assert [sizes(b) for b in reports.bodies] == [{"disk0": 2 * SIZE, "disk1": SIZE}]
    assert await watch.check() == {} and len(reports.bodies) == 1  # once per new size
    with pytest.raises(DiskBoundsError):
        disks[0].pwrite(SIZE, b"x")  # past the old size: refused, never sent
    disks[0].pwrite(SIZE - 1, b"x")
    assert disks[0].size_bytes == SIZE


@pytest.mark.timeout(10)
async def test_a_shrunk_disk_is_reported_and_serves_the_smaller_size(disks: list[DiskImage]) -> None:
    reports = Reports()
    watch = ResizeWatch(disks, reports, 60.0)
    os.truncate(disks[1].path, SIZE // 2)
    reports.fail = True
    with pytest.raises(errors.Unavailable):
        await watch.check()
    reports.fail = False
    assert await watch.check() == {"disk1": SIZE // 2}  # a failed report is sent again
    assert sizes(reports.bodies[0]) == {"disk0": SIZE, "disk1": SIZE // 2}
    with pytest.raises(DiskBoundsError):
        disks[1].pwrite(SIZE // 2, b"x")
    assert os.stat(disks[1].path).st_size == SIZE // 2  # the refused write did not grow the file back
    disks[1].pwrite(SIZE // 2 - 1, b"y")
    os.truncate(disks[1].path, 3 * SIZE)  # resized again: a new report
    assert await watch.check() == {"disk1": 3 * SIZE}


@pytest.mark.timeout(10)
async def test_the_watch_loop_reports_and_adopt_takes_the_new_size(disks: list[DiskImage]) -> None:
    reports = Reports()
    watch = ResizeWatch(disks, reports, 0.02)
    watch.start()
    try:
        os.truncate(disks[0].path, 4 * SIZE)
        for _ in range(200):
            if reports.bodies:
                break
            await asyncio.sleep(0.01)
        assert sizes(reports.bodies[0])["disk0"] == 4 * SIZE
    finally:
        await watch.stop()
    assert not adopt(disks[0], 2 * SIZE)  # not the file's size: kept
    assert adopt(disks[0], 4 * SIZE) and disks[0].size_bytes == 4 * SIZE
    disks[0].pwrite(4 * SIZE - 1, b"z")  # the whole new size takes writes
    assert not adopt(disks[0], 4 * SIZE)
