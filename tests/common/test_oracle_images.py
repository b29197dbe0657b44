"""Oracle: expected images from the write log, compare and verify, against images built here."""

from __future__ import annotations

import os
from pathlib import Path

from agent.workload import prefill
from common import datagen, oracle
from common.wire import writelog as wl

SIZE = 4 << 20
SEED = 1234
PROF = datagen.profile("mixed")


def _log_writes(path: Path, writes: list[tuple[int, int, int, int]]) -> None:
    """(wnum, disk, offset, length) records, as the workload would log them."""
    with wl.LogWriter(path, SEED, PROF) as writer:
        for wnum, disk, offset, length in writes:
            writer.append(wl.LogRecord(wnum, disk, wl.KIND_WRITE, offset, length, 10**18 + wnum))


def _built_here(writes: list[tuple[int, int, int, int]], disk: int, wnum_hi: int) -> bytes:
    img = bytearray(SIZE)
    for wnum, d, offset, length in sorted(writes):
        if d == disk and wnum <= wnum_hi:
            img[offset:offset + length] = datagen.data_for(SEED, wnum, length, PROF)
    return bytes(img)


WRITES = [(1, 0, 0, 65536), (2, 1, 4096, 8192), (3, 0, 32768, 65536), (5, 0, 40960, 4096),
          (8, 0, SIZE - 4096, 4096), (9, 1, 0, 4096), (12, 0, 36864, 1 << 20)]


def test_expected_image_applies_writes_of_the_disk_in_order_up_to_the_point(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    _log_writes(log, WRITES)
    for disk, wnum_hi in [(0, 12), (0, 5), (0, 4), (1, 9), (0, 0)]:
        out = tmp_path / f"e{disk}-{wnum_hi}.img"
        oracle.expected_image(log, disk, SIZE, wnum_hi, out)
        assert out.read_bytes() == _built_here(WRITES, disk, wnum_hi), (disk, wnum_hi)
    assert oracle.points_from_log(log, 0) == [(w, 10**18 + w) for w, d, _, _ in WRITES if d == 0]


def test_prefilled_image_equals_the_oracle_and_continues_wnums(tmp_path: Path) -> None:
    log, img0, img1 = tmp_path / "w.log", tmp_path / "d0.img", tmp_path / "d1.img"
    last0 = prefill(img0, 0, SIZE, 0.5, log, SEED, chunk_bytes=256 << 10)
    last1 = prefill(img1, 1, SIZE // 2, 0.25, log, SEED, chunk_bytes=256 << 10)
    assert last0 == 8 and last1 == 8 + 2  # 16 chunks * 0.5, then 8 chunks * 0.25
    recs = wl.read_records(log)
    assert [r.wnum for r in recs] == list(range(1, 11)) and {r.kind for r in recs} == {wl.KIND_PREFILL}
    assert img0.stat().st_size == SIZE and img1.stat().st_size == SIZE // 2
    built = bytearray(SIZE)
    for r in recs[:8]:
        built[r.offset:r.end] = datagen.data_for(SEED, r.wnum, r.length, PROF)
    assert img0.read_bytes() == bytes(built)
    assert oracle.verify(log, 0, SIZE, last1, img0).ok
    assert oracle.verify(log, 1, SIZE // 2, last1, img1).ok
    assert oracle.verify(log, 0, SIZE, 0, img0).ok  # no agent write yet: every point holds the prefill
    assert oracle.verify(log, 1, SIZE // 2, 0, img1).ok  # both prefills precede any agent write


def test_verify_names_a_single_flipped_byte_and_its_writer(tmp_path: Path) -> None:
    log, img = tmp_path / "w.log", tmp_path / "d.img"
    _log_writes(log, WRITES)
    img.write_bytes(_built_here(WRITES, 0, 12))
    assert oracle.verify(log, 0, SIZE, 12, img).ok
    for offset, writer in [(40960 + 17, 12), (70000 + (1 << 20), 0), (SIZE - 1, 8), (3, 1)]:
        data = bytearray(img.read_bytes())
        data[offset] ^= 0x40
        img.write_bytes(bytes(data))
        res = oracle.verify(log, 0, SIZE, 12, img)
        assert not res.ok and res.first_mismatch_offset == offset and res.bytes_compared == offset
        assert res.mismatch is not None and res.mismatch.last_wnum == writer
        assert res.mismatch.actual == res.mismatch.expected ^ 0x40  # type: ignore[operator]
        data[offset] ^= 0x40
        img.write_bytes(bytes(data))
    assert not list(tmp_path.glob(".oracle-*"))  # the temporary expected image is gone


def test_compare_finds_size_differences_and_block_edges(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    payload = os.urandom(3 << 20)
    a.write_bytes(payload)
    b.write_bytes(payload)
    assert oracle.compare(a, b) is None
    b.write_bytes(payload[:-5])
    m = oracle.compare(a, b)
    assert m is not None and m.offset == len(payload) - 5 and m.actual is None
    flipped = bytearray(payload)
    flipped[1 << 20] ^= 1  # first byte of the second block
    b.write_bytes(bytes(flipped))
    m = oracle.compare(a, b)
    assert m is not None and m.offset == 1 << 20 and m.expected == payload[1 << 20]
