"""The oracle and the prefill: a prefill is the disk's content before the agent numbered a write, so
the initial replication's point (W 0, or any W below the first workload write) holds all of it."""

from __future__ import annotations

from pathlib import Path

from agent.workload import prefill
from common import datagen, oracle
from common.wire import writelog as wl

SIZE = 2 << 20
CHUNK = 256 << 10
SEED = 4321
PROF = datagen.profile("mixed")


def _append(log: Path, kind: int, wnum: int, disk: int, offset: int, length: int) -> None:
    with wl.LogWriter(log, SEED, PROF) as writer:
        writer.append(wl.LogRecord(wnum, disk, kind, offset, length, 10**18 + wnum))


def _write(img: Path, wnum: int, offset: int, length: int) -> None:
    data = bytearray(img.read_bytes())
    data[offset:offset + length] = datagen.data_for(SEED, wnum, length, PROF)
    img.write_bytes(bytes(data))


def _prefilled(tmp_path: Path) -> tuple[Path, Path, int]:
    """Disk 0 half prefilled (wnums 1..4), as before protection."""
    log, img = tmp_path / "w.log", tmp_path / "d0.img"
    last = prefill(img, 0, SIZE, 0.5, log, SEED, chunk_bytes=CHUNK)
    assert last == 4 and img.read_bytes() != bytes(SIZE)
    return log, img, last


def test_the_initial_replication_point_at_w0_holds_the_prefill(tmp_path: Path) -> None:
    log, img, last = _prefilled(tmp_path)
    for w in (0, 1, last):  # the agent's counter is 0 until the first workload write
        res = oracle.verify(log, 0, SIZE, w, img)
        assert res.ok, (w, res.detail)
        assert res.writes_applied == last
    zero = tmp_path / "zero.img"
    zero.write_bytes(bytes(SIZE))
    res = oracle.verify(log, 0, SIZE, 0, zero)  # a replica that missed the prefill is refused
    assert not res.ok and res.mismatch is not None and 1 <= (res.mismatch.last_wnum or 0) <= last
    assert "never written" not in res.detail


def test_workload_writes_after_the_prefill_still_count_by_wnum(tmp_path: Path) -> None:
    log, img, last = _prefilled(tmp_path)
    first = next(r for r in wl.read_records(log) if r.kind == wl.KIND_PREFILL)
    _append(log, wl.KIND_WRITE, last + 1, 0, first.offset, 4096)  # overwrites a prefilled chunk
    _append(log, wl.KIND_WRITE, last + 2, 1, 0, 4096)
    at_ir = tmp_path / "ir.img"
    at_ir.write_bytes(img.read_bytes())
    _write(img, last + 1, first.offset, 4096)
    assert oracle.verify(log, 0, SIZE, 0, at_ir).ok
    assert oracle.verify(log, 0, SIZE, last + 1, img).ok
    res = oracle.verify(log, 0, SIZE, 0, img)
    assert not res.ok and res.mismatch is not None and res.mismatch.last_wnum == first.wnum
    over = oracle.verify_over_base(at_ir, log, 0, SIZE, last + 1, img)  # the IR image + the writes after it
    assert over.ok and over.writes_applied == 1
    assert oracle.machine_consistency(log, {0: last + 1, 1: 0}).ok  # disk 1 wrote nothing up to W 5
    stray = oracle.machine_consistency(log, {0: 0, 1: last + 2})
    assert not stray.ok and stray.stray == {0: [last + 1]}  # the prefill is not a write disk 0 lacks


def test_a_disk_prefilled_after_workload_writes_holds_it_from_the_counter_then(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    _append(log, wl.KIND_WRITE, 1, 0, 0, 4096)
    _append(log, wl.KIND_WRITE, 2, 0, 4096, 4096)
    img1 = tmp_path / "d1.img"
    last = prefill(img1, 1, SIZE, 0.25, log, SEED, chunk_bytes=CHUNK)  # wnums 3, 4; the agent's counter is 2
    _append(log, wl.KIND_WRITE, last + 1, 1, 0, 4096)
    index = wl.LogIndex.load(log)
    assert [r.wnum for r in oracle.point_records(index, 2, 1)] == [3, 4]
    assert [r.wnum for r in oracle.point_records(index, 1, 1)] == []  # before the prefill
    assert [r.wnum for r in oracle.point_records(index, 4, 1)] == [3, 4]
    assert [r.wnum for r in oracle.point_records(index, 5, 1)] == [3, 4, 5]
    assert [r.wnum for r in oracle.point_records(index, 0)] == []
    assert oracle.verify(log, 1, SIZE, 2, img1).ok
