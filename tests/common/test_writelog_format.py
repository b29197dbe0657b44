"""Write log: struct sizes, round trip, torn tails, corruption, continuing a log."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common import datagen
from common.errors import ConfigError
from common.wire import writelog as wl

PROF = datagen.profile("mixed")


def _rec(wnum: int, disk: int = 0, kind: int = wl.KIND_WRITE) -> wl.LogRecord:
    return wl.LogRecord(wnum, disk, kind, wnum * 4096, 8192, 1_700_000_000_000_000_000 + wnum)


def _write(path: Path, n: int, seed: int = 42) -> list[wl.LogRecord]:
    recs = [_rec(w, disk=w % 2, kind=wl.KIND_PREFILL if w < 3 else wl.KIND_WRITE) for w in range(1, n + 1)]
    with wl.LogWriter(path, seed, PROF) as writer:
        for r in recs:
            writer.append(r)
    return recs


def test_struct_sizes() -> None:
    assert wl.HEADER.size == 24 and wl.RECORD.size == 36


def test_round_trip_keeps_header_and_records(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    recs = _write(path, 10, seed=2**63 + 5)
    header, got = wl.read_log(path)
    assert header is not None and header.seed == 2**63 + 5
    assert header.profile.name == "mixed" and header.profile.params == PROF.params
    assert got == recs
    assert path.stat().st_size == header.size + 10 * wl.RECORD.size  # no data stored


@pytest.mark.parametrize("cut", [1, 17, 35])
def test_partial_tail_record_is_ignored_and_truncated_on_append(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "w.log"
    recs = _write(path, 5)
    with open(path, "ab") as f:
        f.write(wl.encode_record(_rec(6))[:cut])
    assert wl.read_records(path) == recs
    with wl.LogWriter(path, 42, PROF) as writer:
        assert writer.last_wnum == 5
        writer.append(_rec(6))
    assert [r.wnum for r in wl.read_records(path)] == [1, 2, 3, 4, 5, 6]


def test_last_record_with_bad_crc_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    _write(path, 4)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert [r.wnum for r in wl.read_records(path)] == [1, 2, 3]


def test_corruption_before_the_tail_raises(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    _write(path, 4)
    header = wl.read_header(path)
    raw = bytearray(path.read_bytes())
    raw[header.size + 5] ^= 0x01  # inside record 0
    path.write_bytes(bytes(raw))
    with pytest.raises(wl.WriteLogError, match="record 0"):
        wl.read_records(path)


def test_torn_header_reads_as_empty_and_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    path.write_bytes(wl.encode_header(9, PROF)[:10])
    assert wl.read_log(path) == (None, [])
    with wl.LogWriter(path, 9, PROF) as writer:
        writer.append(_rec(1))
    assert wl.read_header(path).seed == 9 and len(wl.read_records(path)) == 1


def test_continuing_a_log_checks_seed_profile_and_order(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    _write(path, 3)
    with pytest.raises(ConfigError, match="seed 42"):
        wl.LogWriter(path, 43, PROF)
    with pytest.raises(ConfigError, match="profile"):
        wl.LogWriter(path, 42, datagen.profile("random"))
    with wl.LogWriter(path, 42, PROF) as writer, pytest.raises(wl.WriteLogError, match="not above"):
        writer.append(_rec(3))


def test_not_a_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(os.urandom(100))
    with pytest.raises(wl.WriteLogError, match="magic"):
        wl.read_log(path)


def test_index_lookups(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    _write(path, 10)
    idx = wl.LogIndex.load(path)
    assert idx.max_wnum == 10
    assert [r.wnum for r in idx.upto(6, disk=0)] == [2, 4, 6]
    # wnum w covers [w*4096, w*4096 + 8192): offset 5*4096 is covered by 4 (disk 0) and 5 (disk 1)
    rec = idx.last_covering(0, 5 * 4096, 10)
    assert rec is not None and rec.wnum == 4
    assert idx.last_covering(0, 5 * 4096, 3) is None
    assert idx.wnum_at(1_700_000_000_000_000_000 + 7) == 7
