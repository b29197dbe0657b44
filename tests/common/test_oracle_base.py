"""oracle.verify_over_base: a failed-over image (the base) plus the logged writes made to it after."""

from __future__ import annotations

import os
import random
from pathlib import Path

from common import datagen, oracle
from common.wire import writelog as wl

SIZE = 3 << 20


def make_log(path: Path, seed: int, writes: list[tuple[int, int, int, int]]) -> None:
    """(wnum, kind, offset, length) records of disk 0."""
    with wl.LogWriter(path, seed, datagen.profile("mixed")) as w:
        for wnum, kind, offset, length in writes:
            w.append(wl.LogRecord(wnum, 0, kind, offset, length, wnum))


def image_of(base: bytes, seed: int, writes: list[tuple[int, int, int, int]]) -> bytearray:
    out = bytearray(base)
    for wnum, _, offset, length in writes:
        out[offset:offset + length] = datagen.data_for(seed, wnum, length, datagen.profile("mixed"))
    return out


def test_base_plus_logged_writes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    base = bytearray(SIZE)
    base[100_000:1_200_000] = rng.randbytes(1_100_000)  # data, and holes that stay zero
    (tmp_path / "base.img").write_bytes(base)
    writes = [(w, wl.KIND_WRITE, rng.randrange(0, SIZE - 70_000) // 4096 * 4096, rng.choice([4096, 65536]))
              for w in range(1, 30)]
    make_log(tmp_path / "view.log", seed, writes)
    image = tmp_path / "image.img"
    image.write_bytes(image_of(bytes(base), seed, writes))
    res = oracle.verify_over_base(tmp_path / "base.img", tmp_path / "view.log", 0, SIZE, 29, image)
    assert res.ok and res.writes_applied == 29, res.detail
    # up to W=20: the image has writes after it -> a mismatch at one of them
    res = oracle.verify_over_base(tmp_path / "base.img", tmp_path / "view.log", 0, SIZE, 20, image)
    assert not res.ok and res.first_mismatch_offset is not None
    assert any(w[2] <= res.first_mismatch_offset < w[2] + w[3] for w in writes[20:])  # a later write's byte
    # writes after wnum_lo only: the earlier ones must then be in the base
    early = image_of(bytes(base), seed, writes[:10])
    (tmp_path / "early.img").write_bytes(early)
    assert oracle.verify_over_base(tmp_path / "early.img", tmp_path / "view.log", 0, SIZE, 29, image, wnum_lo=10).ok
    # one byte of the base changed: refused, and no logged write covers it
    fd = os.open(image, os.O_WRONLY)
    untouched = next(o for o in range(0, SIZE, 4096) if all(not (w[2] <= o < w[2] + w[3]) for w in writes))
    os.pwrite(fd, bytes([base[untouched] ^ 0xFF]), untouched)
    os.close(fd)
    res = oracle.verify_over_base(tmp_path / "base.img", tmp_path / "view.log", 0, SIZE, 29, image)
    assert not res.ok and res.first_mismatch_offset == untouched and res.mismatch is not None
    assert res.mismatch.last_wnum is None and "never" not in res.detail


def test_a_write_in_doubt_may_be_there_or_not(tmp_path: Path, seed: int) -> None:
    base = bytes(SIZE)
    (tmp_path / "base.img").write_bytes(base)
    writes = [(1, wl.KIND_WRITE, 0, 65536), (2, wl.KIND_DOUBT, 1 << 20, 65536)]
    make_log(tmp_path / "view.log", seed, writes)
    for applied in (writes[:1], writes):
        (tmp_path / "image.img").write_bytes(image_of(base, seed, applied))
        assert oracle.verify_over_base(tmp_path / "base.img", tmp_path / "view.log", 0, SIZE, 2,
                                       tmp_path / "image.img").ok
    (tmp_path / "image.img").write_bytes(image_of(base, seed, writes[1:]))  # the acknowledged one is missing
    assert not oracle.verify_over_base(tmp_path / "base.img", tmp_path / "view.log", 0, SIZE, 2,
                                       tmp_path / "image.img").ok
