"""Fuzz of the two binary files a crash can leave torn: the MT's undo-journal segment
(common/wire/journal.py, scanned from the file) and the agent's activity-log slots
(common/wire/actlog.py). Hostile edits, huge length fields, truncations and extensions give
records that lie inside the file and a tail, or the codec's own error, never another exception;
scanning allocates about one CHUNK whatever a length field claims.
(test_journal.py / test_actlog.py have torn tails at every length and random bytes.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import MalformedBatch
from common.wire import actlog as wal
from common.wire import journal as wj
from tests.fuzzing import HUGE, fuzz, fuzz_seed, mutated, peak_alloc  # noqa: F401

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("fuzz_seed")]

SLACK = 256 << 10
u64 = st.integers(0, 2**64 - 1)
undos = st.builds(wj.encode_undo, u64, u64, u64, st.binary(min_size=1, max_size=300))
commits = st.builds(lambda *a: wj.encode_commit(wj.CommitInfo(*a)), u64, u64, u64, u64, u64, u64, u64,
                    st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**32 - 1))
segments = st.lists(st.one_of(undos, commits), max_size=6).map(
    lambda recs: wj.encode_segment_header(b"d" * 16, 3) + b"".join(recs))


@fuzz(200)
@given(segments.flatmap(mutated))
def test_mutated_segment_file(tmp_path: Path, buf: bytes) -> None:
    path = tmp_path / "seg"
    path.write_bytes(buf)
    try:
        result = wj.scan_segment(path)
    except MalformedBatch as exc:  # only a full header that is not a v1 journal header
        assert len(buf) >= wj.SEGMENT_HEADER_SIZE and exc.code in ("journal_corrupt", "format_too_new",
                                                                    "malformed_batch")
        return
    assert result.file_size == len(buf) and result.valid_end <= len(buf)
    for offset, rec in result.records:
        end = rec.end if isinstance(rec, wj.UndoRecord) else offset + wj.COMMIT_SIZE
        assert wj.SEGMENT_HEADER_SIZE <= offset < end <= result.valid_end
        if isinstance(rec, wj.UndoRecord):
            with open(path, "rb") as f:
                assert len(wj.read_undo_data(f, rec)) == rec.length
    assert peak_alloc(lambda: wj.scan_segment(path)) < wj.CHUNK + len(buf) + SLACK


@pytest.mark.parametrize("length", [wj.MAX_UNDO_LEN, wj.MAX_UNDO_LEN + 1, *HUGE[:2]])
def test_an_undo_length_claiming_gigabytes_reads_no_more_than_a_chunk(tmp_path: Path, length: int) -> None:
    head = wj.UNDO_HEAD.pack(wj.KIND_UNDO, b"\0\0\0", 1, 1, 0, length)
    path = tmp_path / "seg"
    path.write_bytes(wj.encode_segment_header(b"d" * 16, 1) + head + b"x" * 100)
    result = wj.scan_segment(path)
    assert result.records == [] and result.valid_end == wj.SEGMENT_HEADER_SIZE and result.tail
    bound = wj.CHUNK + SLACK if length <= wj.MAX_UNDO_LEN else SLACK  # above the cap: refused unread
    assert peak_alloc(lambda: wj.scan_segment(path)) < bound


def slot(counter: int, sizes: tuple[int, ...]) -> bytes:
    nbits = [-(-size // 4096) for size in sizes]
    disks = tuple(wal.DiskBits(i, size, n, b"\x5a" * -(-n // 8)) for i, (size, n) in enumerate(zip(sizes, nbits,
                                                                                                strict=True)))
    return wal.encode(wal.Snapshot(counter, 4096, disks))


slots = st.builds(slot, st.integers(0, 2**64 - 1), st.lists(st.integers(0, 300_000), max_size=3).map(tuple))


@fuzz(300)
@given(slots.flatmap(mutated), slots)
def test_mutated_activity_log_slot(raw: bytes, good: bytes) -> None:
    snap: wal.Snapshot | None = None
    try:
        snap = wal.decode(raw)
    except wal.ActLogError:
        pass
    else:
        assert all(len(d.bits) == -(-d.nbits // 8) for d in snap.disks)
    try:
        picked = wal.pick([raw, good])
    except wal.ActLogTooNew:
        return
    assert picked is not None  # the good slot (or a valid newer one) stands
    newer = snap is not None and snap.counter >= wal.decode(good).counter  # the first of equal counters wins
    assert picked == (snap if newer else wal.decode(good))
    assert peak_alloc(lambda: wal.decode(raw)) < 2 * len(raw) + SLACK
