"""Property tests (hypothesis) for the wire codecs: they never fail any other way than documented."""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis")

import xxhash  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from common.errors import MalformedBatch, TamperedSeal  # noqa: E402
from common.wire import batch as wb  # noqa: E402
from common.wire import journal as wj  # noqa: E402
from common.wire import seal as ws  # noqa: E402

KEY = bytes(range(32))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u64 = st.integers(0, 2**64 - 1)
records = st.builds(wb.Record, st.integers(0, 2**40), st.binary(min_size=1, max_size=300))


@st.composite
def batches(draw: st.DrawFn) -> wb.ChangeBatch:
    wnum_hi = draw(u64)
    return wb.ChangeBatch(
        disk_id=draw(st.binary(min_size=16, max_size=16)),
        generation=draw(st.integers(1, 2**64 - 1)),
        seq=draw(st.integers(1, 2**64 - 1)),
        wnum_first=draw(st.one_of(st.just(0), st.integers(0, wnum_hi))),
        wnum_hi=wnum_hi,
        t_first_ns=draw(u64),
        t_last_ns=draw(u64),
        mode=draw(st.sampled_from(wb.Mode)),
        accuracy=draw(st.sampled_from(wb.Accuracy)),
        flags=draw(st.integers(0, 3)),
        tags=draw(st.lists(st.binary(max_size=64), max_size=5)),
        records=draw(st.lists(records, max_size=8)),
    )


def reseal(buf: bytes) -> bytes:
    body = buf[:-wb.TRAILER_SIZE]
    return body + xxhash.xxh3_128_digest(body)


@SETTINGS
@given(batches())
def test_batch_round_trip(batch: wb.ChangeBatch) -> None:
    buf = wb.encode(batch)
    assert wb.decode(buf) == batch
    assert wb.parse_header(buf).total_len == len(buf)


@SETTINGS
@given(st.binary(max_size=400))
def test_batch_decode_arbitrary_bytes(data: bytes) -> None:
    for candidate in (data, wb.MAGIC + b"\x01\x00" + data, reseal(wb.MAGIC + b"\x01\x00" + data)):
        try:
            wb.decode(candidate, disk_size=1 << 30)
        except MalformedBatch:
            pass


@SETTINGS
@given(batches(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, 40))
def test_batch_decode_mutated_and_resealed(batch: wb.ChangeBatch, edits: list[tuple[int, int]], cut: int) -> None:
    """Edits behind a valid checksum exercise the structural checks: decode or MalformedBatch."""
    buf = bytearray(wb.encode(batch))
    for pos, value in edits:
        buf[pos % len(buf)] = value
    candidate = reseal(bytes(buf[: len(buf) - cut]))
    try:
        out = wb.decode(candidate, disk_size=2**40 + 300)
    except MalformedBatch:
        return
    assert wb.encode(out) == candidate


@SETTINGS
@given(st.binary(max_size=400))
def test_open_sealed_arbitrary_bytes(data: bytes) -> None:
    for candidate in (data, ws.MAGIC + b"\x01\x00" + data):
        try:
            ws.open_sealed(candidate, lambda epoch: KEY)
        except (MalformedBatch, TamperedSeal):
            pass


@SETTINGS
@given(batches(), st.integers(0, 10_000), st.integers(1, 255))
def test_any_mutated_seal_is_rejected(batch: wb.ChangeBatch, pos: int, xor: int) -> None:
    sealer = ws.Sealer(KEY, 1, batch.disk_id, batch.generation, b"s" * 16)
    sealed = bytearray(sealer.seal(batch.seq, wb.encode(batch)))
    assert ws.open_sealed(bytes(sealed), lambda epoch: KEY)[1] == wb.encode(batch)
    sealed[pos % len(sealed)] ^= xor
    with pytest.raises((MalformedBatch, TamperedSeal)):
        ws.open_sealed(bytes(sealed), lambda epoch: KEY)


undo = st.tuples(st.just("u"), u64, u64, u64, st.binary(min_size=1, max_size=200))
commits = st.builds(wj.CommitInfo, u64, u64, u64, u64, u64, u64, u64, st.integers(0, 255),
                    st.integers(0, 255), st.integers(0, 2**32 - 1))


@SETTINGS
@given(st.lists(st.one_of(undo, commits), max_size=10))
def test_journal_round_trip(items: list[tuple[str, int, int, int, bytes] | wj.CommitInfo]) -> None:
    parts = [wj.encode_segment_header(b"d" * 16, 1)]
    for item in items:
        parts.append(wj.encode_commit(item) if isinstance(item, wj.CommitInfo) else wj.encode_undo(*item[1:]))
    buf = b"".join(parts)
    scanner = wj.scan(buf)
    got = [rec for _, rec in scanner]
    assert scanner.valid_end == len(buf) and scanner.tail is None
    assert len(got) == len(items)
    for item, rec in zip(items, got, strict=True):
        if isinstance(item, wj.CommitInfo):
            assert rec == item
        else:
            assert isinstance(rec, wj.UndoRecord)
            assert (rec.gen, rec.seq, rec.offset) == item[1:4]
            assert buf[rec.data_offset:rec.data_offset + rec.length] == item[4]


@SETTINGS
@given(st.binary(max_size=600), st.integers(0, 64))
def test_journal_scan_arbitrary_bytes(data: bytes, start: int) -> None:
    scanner = wj.scan(data, start)
    for off, _ in scanner:
        assert start <= off < len(data)
    assert start <= scanner.valid_end <= max(start, len(data))
