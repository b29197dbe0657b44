"""Regenerable workload data: determinism, profiles, speed, and the ~2:1 lz4 ratio of "mixed"."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import lz4.frame
import pytest

from common import datagen
from common.errors import ConfigError


def test_same_inputs_same_bytes_other_inputs_other_bytes() -> None:
    a = datagen.data_for(7, 100, 65536)
    assert a == datagen.data_for(7, 100, 65536)
    assert len(a) == 65536
    assert a != datagen.data_for(7, 101, 65536)
    assert a != datagen.data_for(8, 100, 65536)
    assert datagen.data_for(7, 100, 65536, "random") != a


def test_bytes_do_not_depend_on_the_process() -> None:
    """Hash randomisation or import order must not change the data: regenerate in a child."""
    code = "from common.datagen import data_for; import sys; sys.stdout.buffer.write(data_for(3, 9, 20000))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=30,
                           env={"PYTHONHASHSEED": "123", "PYTHONPATH": "."})
    assert child.stdout == datagen.data_for(3, 9, 20000)


def test_odd_lengths_are_exact() -> None:
    for n in (0, 1, 4095, 4097, 12345):
        assert len(datagen.data_for(1, 2, n)) == n


def _stream(profile: str, total: int) -> bytes:
    rng = random.Random(5)
    parts, size, wnum = [], 0, 1
    while size < total:
        n = rng.choices([4096, 65536, 1 << 20], [0.5, 0.4, 0.1])[0]
        parts.append(datagen.data_for(11, wnum, n, profile))
        size, wnum = size + n, wnum + 1
    return b"".join(parts)


def test_mixed_compresses_about_two_to_one_with_lz4() -> None:
    data = _stream("mixed", 8 << 20)
    ratio = len(data) / len(lz4.frame.compress(data))
    assert 1.8 <= ratio <= 2.5, ratio


def test_random_is_incompressible() -> None:
    data = _stream("random", 4 << 20)
    assert len(lz4.frame.compress(data)) >= len(data) * 0.99


@pytest.mark.parametrize("profile", ["mixed", "random"])
def test_generation_is_fast_enough(profile: str) -> None:
    best = 0.0
    for attempt in range(3):  # best of three: a busy CI box should not fail this
        started = time.perf_counter()
        for w in range(64):
            datagen.data_for(1, attempt * 100 + w, 1 << 20, profile)
        best = max(best, 64 * (1 << 20) / (time.perf_counter() - started) / 1e6)
    assert best >= 300, f"{best:.0f} MB/s"


def test_unknown_profile_and_bad_shares_are_refused() -> None:
    with pytest.raises(ConfigError):
        datagen.profile("zeros")
    with pytest.raises(ConfigError):
        datagen.profile("mixed", {"zero_share": 0.7, "text_share": 0.5})
