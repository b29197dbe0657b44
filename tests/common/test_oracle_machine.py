"""The oracle on a machine of three disks: every image at one W from the machine's write log, a
report per disk, and whether per-disk points taken independently are one machine state."""

from __future__ import annotations

from pathlib import Path

from common import datagen, oracle
from common.wire import writelog as wl

SIZE = 1 << 20
SEED = 77
PROF = datagen.profile("mixed")
# (wnum, disk, offset, length): one counter across the three disks
WRITES = [(1, 0, 0, 8192), (2, 1, 4096, 4096), (3, 2, 0, 65536), (4, 0, 4096, 4096), (5, 1, 0, 4096),
          (6, 0, 65536, 4096), (7, 2, 8192, 4096), (8, 2, 0, 4096), (9, 1, 131072, 8192)]


def log_writes(path: Path) -> None:
    with wl.LogWriter(path, SEED, PROF) as writer:
        for wnum, disk, offset, length in WRITES:
            writer.append(wl.LogRecord(wnum, disk, wl.KIND_WRITE, offset, length, 10**18 + wnum))


def image_at(path: Path, disk: int, wnum: int) -> Path:
    img = bytearray(SIZE)
    for w, d, offset, length in WRITES:
        if d == disk and w <= wnum:
            img[offset:offset + length] = datagen.data_for(SEED, w, length, PROF)
    path.write_bytes(bytes(img))
    return path


def test_every_disk_at_one_w_passes_and_the_report_names_each(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log_writes(log)
    disks = [oracle.DiskImage(d, f"disk{d}", SIZE, image_at(tmp_path / f"d{d}.img", d, 7)) for d in range(3)]
    res = oracle.verify_machine(log, disks, 7)
    assert res.ok and list(res.disks) == ["disk0", "disk1", "disk2"]
    assert [r.writes_applied for r in res.disks.values()] == [3, 2, 2]
    text = res.report()
    assert text.startswith("machine point W=7: every disk byte-exact")
    assert "disk1: byte-exact (2 writes <= 7" in text


def test_one_disk_at_another_w_fails_and_the_report_says_where(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log_writes(log)
    disks = [oracle.DiskImage(0, "disk0", SIZE, image_at(tmp_path / "d0.img", 0, 8)),
             oracle.DiskImage(1, "disk1", SIZE, image_at(tmp_path / "d1.img", 1, 8)),
             oracle.DiskImage(2, "disk2", SIZE, image_at(tmp_path / "d2.img", 2, 7))]  # lacks write 8
    res = oracle.verify_machine(log, disks, 8)
    assert not res.ok
    assert res.disks["disk0"].ok and res.disks["disk1"].ok and not res.disks["disk2"].ok
    assert res.disks["disk2"].first_mismatch_offset == 0
    assert "disk2: MISMATCH offset 0:" in res.report() and "last written by wnum 8" in res.report()
    assert oracle.verify_machine(log, disks[2:], 7).ok  # it is disk2's state at 7


def test_per_disk_points_are_one_machine_state_only_without_writes_in_between(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log_writes(log)
    same = oracle.machine_consistency(log, {0: 6, 1: 5, 2: 6})  # disk1 wrote nothing in (5, 6]
    assert same.ok and same.wnum == 6 and same.describe() == "one machine state at W=6"
    mixed = oracle.machine_consistency(log, {0: 9, 1: 9, 2: 6})  # disk2 wrote 7 and 8 after its point
    assert not mixed.ok and mixed.stray == {2: [7, 8]}
    assert mixed.describe() == "disk 2 lacks writes 7..8 (2) of W=9"
