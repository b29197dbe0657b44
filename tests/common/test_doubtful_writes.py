"""A write in doubt (the agent died before answering) may or may not be on the replica: the
oracle accepts either, and nothing else."""

from __future__ import annotations

from pathlib import Path

from common import datagen, oracle
from common.wire import writelog as wl

SIZE = 4 << 20


def make_log(path: Path) -> None:
    w = wl.LogWriter(path, 3, datagen.profile("mixed"))
    w.append(wl.LogRecord(1, 0, wl.KIND_WRITE, 0, 8192, 1))
    w.append(wl.LogRecord(2, 0, wl.KIND_DOUBT, 4096, 65536, 2))
    w.close()


def image_with(path: Path, wnums: list[int]) -> Path:
    img = bytearray(SIZE)
    spans = {1: (0, 8192), 2: (4096, 65536)}
    for w in wnums:
        off, n = spans[w]
        img[off:off + n] = datagen.data_for(3, w, n, "mixed")
    path.write_bytes(bytes(img))
    return path


def test_either_outcome_of_a_doubtful_write_verifies(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    make_log(log)
    for wnums in ([1], [1, 2]):
        res = oracle.verify(log, 0, SIZE, 2, image_with(tmp_path / "img", wnums))
        assert res.ok, res.detail
    bad = bytearray(image_with(tmp_path / "img", [1, 2]).read_bytes())
    bad[3 << 20] ^= 1  # a byte nobody wrote
    (tmp_path / "img").write_bytes(bytes(bad))
    res = oracle.verify(log, 0, SIZE, 2, tmp_path / "img")
    assert not res.ok and res.first_mismatch_offset == 3 << 20
