"""The causal workload's check (agent/causal.py): an effect on B whose cause is not on A is reported,
images are read against the write logs, and a slot holding something else is an error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent import causal
from common import datagen
from common.errors import DrlabError
from common.wire import writelog as wl

SLOT = causal.SLOT


def write_side(tmp: Path, name: str, seed: int, slots: int, present: set[int]) -> tuple[Path, Path]:
    """A log with one write per slot (wnum = slot + 1) and an image holding the ``present`` ones."""
    log_path, image = tmp / f"{name}.log", tmp / f"{name}.img"
    img = bytearray(slots * SLOT)
    with wl.LogWriter(log_path, seed, datagen.profile(causal.PROFILE)) as log:
        for i in range(slots):
            log.append(wl.LogRecord(i + 1, 0, wl.KIND_WRITE, i * SLOT, SLOT, time.time_ns()))
            if i in present:
                img[i * SLOT:(i + 1) * SLOT] = datagen.data_for(seed, i + 1, SLOT, causal.PROFILE)
    image.write_bytes(bytes(img))
    return log_path, image


def test_violations_rule() -> None:
    assert causal.violations({1, 2, 3}, {1, 2}) == []
    assert causal.violations({1}, {1, 2, 5}) == ["effect 2 is on B but its cause is not on A",
                                                "effect 5 is on B but its cause is not on A"]


def test_check_reads_images_against_the_logs(tmp_path: Path) -> None:
    a_log, a_img = write_side(tmp_path, "a", 11, 8, {0, 1, 2, 3})
    b_log, b_img = write_side(tmp_path, "b", 12, 8, {0, 1, 2})
    got = causal.check(a_log, b_log, a_img, b_img)
    assert (got.causes, got.effects, got.violations) == (4, 3, [])
    b_log2, b_img2 = write_side(tmp_path, "b2", 12, 8, {0, 1, 2, 3, 4, 6})
    got = causal.check(a_log, b_log2, a_img, b_img2)
    assert got.violations == ["effect 4 is on B but its cause is not on A",
                              "effect 6 is on B but its cause is not on A"]
    data = bytearray(a_img.read_bytes())
    data[5 * SLOT + 7] = 1  # slot 5 holds neither its write nor zeros
    a_img.write_bytes(bytes(data))
    with pytest.raises(DrlabError, match="slot 5"):
        causal.check(a_log, b_log, a_img, b_img)
