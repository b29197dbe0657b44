"""The activity log: hot before written, durable across a reopen, cooled only when applied,
idle and not pending; pinned extents wait for RESYNC_DONE; a torn slot falls back."""

from __future__ import annotations

import os
from pathlib import Path

from agent.actlog import PINNED, ActivityLog

MiB = 1 << 20
DISKS = [(0, 16 * MiB), (1, 4 * MiB)]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(path: Path, clock: Clock | None = None) -> ActivityLog:
    return ActivityLog(path, DISKS, MiB, linger_s=2.0, clock=clock or Clock())


async def test_hot_extents_are_durable_before_the_write_and_survive_a_reopen(tmp_path: Path) -> None:
    al = make(tmp_path / "al")
    assert al.open() == {}
    assert al.mark(0, 3 * MiB - 10, 20)  # two cold extents: the caller must wait
    await al.ensure()
    assert not al.mark(0, 3 * MiB, 5)  # hot and durable already
    assert al.mark(1, 0, 1)
    al.close()  # the second mark was never flushed: a crash now would lose only that
    again = make(tmp_path / "al")
    assert again.open() == {0: [(2 * MiB, 2 * MiB)], 1: []}
    again.close()


async def test_cooling_needs_applied_idle_and_not_pending(tmp_path: Path) -> None:
    clock = Clock()
    al = make(tmp_path / "al", clock)
    al.open()
    al.mark(0, 0, 10)
    al.mark(0, 5 * MiB, 10)
    await al.ensure()
    al.note_cut(0, seq=4, extents=[(0, 10)], done=False)
    al.note_cut(0, seq=6, extents=[(5 * MiB, 10)], done=False)
    clock.t += 5
    assert al.cool(0, applied_seq=5, busy=lambda off, n: False) == 1  # seq 6 is not applied yet
    assert al.extents(0) == [(5 * MiB, MiB)]
    assert al.cool(0, applied_seq=6, busy=lambda off, n: True) == 0  # the tracker still holds changes there
    al.mark(0, 5 * MiB, 1)  # written again: lingers anew
    assert al.cool(0, applied_seq=6, busy=lambda off, n: False) == 0
    clock.t += 3
    assert al.cool(0, applied_seq=6, busy=lambda off, n: False) == 1
    assert al.extents(0) == [] and al.dirty
    await al.flush()
    al.close()
    again = make(tmp_path / "al")
    assert again.open() == {0: [], 1: []}
    again.close()


async def test_pinned_extents_wait_for_the_resync_done_batch(tmp_path: Path) -> None:
    clock = Clock()
    al = make(tmp_path / "al", clock)
    al.open()
    al.restore(0, [(MiB, 2 * MiB)])
    assert al.last_seq[0] == {1: PINNED, 2: PINNED}
    clock.t += 10
    al.note_cut(0, seq=3, extents=[(MiB, 10)], done=False)  # a copy record does not unpin
    assert al.cool(0, applied_seq=10**6, busy=lambda off, n: False) == 0
    al.note_cut(0, seq=9, extents=[], done=True)
    assert al.cool(0, applied_seq=8, busy=lambda off, n: False) == 0
    assert al.cool(0, applied_seq=9, busy=lambda off, n: False) == 2
    al.close()


async def test_a_torn_newest_slot_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    al = make(tmp_path / "al")
    al.open()
    al.mark(0, 0, 1)
    await al.flush()  # slot 1 (counter 1)
    al.mark(0, 7 * MiB, 1)
    await al.flush()  # slot 0 (counter 2)
    al.close()
    fd = os.open(tmp_path / "al", os.O_RDWR)
    os.pwrite(fd, b"\xff" * 64, 40)  # garbage over the newest slot
    os.close(fd)
    again = make(tmp_path / "al")
    assert again.open() == {0: [(0, MiB)], 1: []}
    again.close()


async def test_unreadable_log_means_nothing_is_known(tmp_path: Path) -> None:
    (tmp_path / "al").write_bytes(b"\x01" * 9000)
    al = make(tmp_path / "al")
    assert al.open() is None
    al.close()


async def test_a_disk_of_another_size_is_all_hot(tmp_path: Path) -> None:
    al = make(tmp_path / "al")
    al.open()
    al.mark(1, 0, 1)
    await al.flush()
    al.close()
    grown = ActivityLog(tmp_path / "al", [(0, 16 * MiB), (1, 8 * MiB)], MiB, linger_s=2.0)
    assert grown.open() == {0: [], 1: [(0, 8 * MiB)]}
    grown.close()
