"""Change batch codec: round trips and every way a batch can be malformed."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
import xxhash

from common.errors import DrlabError, MalformedBatch
from common.wire import batch as wb

DISK = bytes(range(16))


def make_batch(**overrides: object) -> wb.ChangeBatch:
    fields: dict[str, object] = dict(
        disk_id=DISK, generation=3, seq=7, wnum_first=100, wnum_hi=105,
        t_first_ns=1_700_000_000_000_000_000, t_last_ns=1_700_000_000_100_000_000,
        mode=wb.Mode.DATA, accuracy=wb.Accuracy.EXACT, flags=wb.Flags.RESYNC_DONE,
        tags=[b"app-consistent", b""],
        records=[wb.Record(0, b"a" * 512), wb.Record(4096, b"\x00\x01" * 2048), wb.Record(4096, b"z")],
    )
    fields.update(overrides)
    return wb.ChangeBatch(**fields)  # type: ignore[arg-type]


HDR_DEFAULTS = dict(
    magic=wb.MAGIC, version=wb.VERSION, flags=0, disk_id=DISK, generation=1, seq=1, wnum_first=1,
    wnum_hi=1, t_first_ns=1, t_last_ns=2, mode=1, accuracy=1, reserved=0, ntags=0, nrecords=0,
)


def raw_batch(body: bytes = b"", body_len: int | None = None, **hdr: int | bytes) -> bytes:
    """A batch built field by field, with a correct checksum, whatever the fields say."""
    f = {**HDR_DEFAULTS, **hdr}
    head = wb.HEADER.pack(*f.values(), len(body) if body_len is None else body_len)
    return head + body + xxhash.xxh3_128_digest(head + body)


def reseal(buf: bytes | bytearray) -> bytes:
    """Recompute the trailer of a (modified) encoded batch."""
    body = bytes(buf[:-wb.TRAILER_SIZE])
    return body + xxhash.xxh3_128_digest(body)


def rec(offset: int, length: int, reserved: int = 0, data: bytes | None = None) -> bytes:
    return wb.RECORD.pack(offset, length, reserved) + (b"x" * length if data is None else data)


def test_struct_sizes() -> None:
    assert wb.HEADER.size == wb.HEADER_SIZE == 92
    assert wb.RECORD.size == 16


def test_round_trip() -> None:
    batch = make_batch()
    buf = wb.encode(batch)
    out = wb.decode(buf, disk_size=8192)
    assert out == batch
    assert [bytes(r.data) for r in out.records] == [bytes(r.data) for r in batch.records]
    assert all(isinstance(r.data, memoryview) for r in out.records)
    assert out.tags == [b"app-consistent", b""]
    assert isinstance(out.mode, wb.Mode) and isinstance(out.accuracy, wb.Accuracy)
    assert len(buf) == wb.HEADER_SIZE + 4 + 14 + 4 + 3 * 16 + 512 + 4096 + 1 + wb.TRAILER_SIZE


def test_round_trip_empty_and_other_inputs() -> None:
    batch = make_batch(tags=[], records=[], wnum_first=0, mode=wb.Mode.RESYNC, accuracy=wb.Accuracy.NONE,
                       flags=wb.Flags.RESYNC_START | wb.Flags.RESYNC_DONE)
    buf = wb.encode(batch)
    assert len(buf) == wb.HEADER_SIZE + wb.TRAILER_SIZE
    for form in (buf, bytearray(buf), memoryview(buf)):
        assert wb.decode(form) == batch


def test_encode_accepts_buffer_data() -> None:
    batch = make_batch(records=[wb.Record(0, memoryview(b"abc")), wb.Record(3, bytearray(b"de"))])
    out = wb.decode(wb.encode(batch))
    assert [bytes(r.data) for r in out.records] == [b"abc", b"de"]


def test_parse_header_checksum_and_total() -> None:
    batch = make_batch()
    buf = wb.encode(batch)
    hdr = wb.parse_header(buf[: wb.HEADER_SIZE])
    assert (hdr.disk_id, hdr.generation, hdr.seq, hdr.wnum_hi) == (DISK, 3, 7, 105)
    assert (hdr.ntags, hdr.nrecords, hdr.total_len) == (2, 3, len(buf))
    assert wb.checksum(buf) == buf[-16:] == xxhash.xxh3_128_digest(buf[:-16])
    assert wb.total_data_bytes(batch) == 512 + 4096 + 1
    other = wb.encode(make_batch(records=[wb.Record(0, b"b" * 512)]))
    assert wb.checksum(other) != wb.checksum(buf)
    with pytest.raises(MalformedBatch):
        wb.checksum(buf[:50])


def test_error_class() -> None:
    with pytest.raises(MalformedBatch) as info:
        wb.decode(b"nonsense")
    assert isinstance(info.value, DrlabError)
    assert (info.value.status, info.value.retriable, info.value.code) == (400, False, "malformed_batch")


def test_truncated_at_every_length() -> None:
    buf = wb.encode(make_batch(records=[wb.Record(0, b"ab"), wb.Record(8, b"cd")]))
    for n in range(len(buf)):
        with pytest.raises(MalformedBatch):
            wb.decode(buf[:n])
    for n in range(wb.HEADER_SIZE):
        with pytest.raises(MalformedBatch):
            wb.parse_header(buf[:n])


def test_trailing_byte() -> None:
    buf = wb.encode(make_batch())
    with pytest.raises(MalformedBatch, match="body_len"):
        wb.decode(buf + b"\0")


def test_every_flipped_byte_is_caught() -> None:
    buf = wb.encode(make_batch(records=[wb.Record(0, b"abcdef")], tags=[b"t"]))
    for i in range(len(buf)):
        bad = bytearray(buf)
        bad[i] ^= 0x41
        with pytest.raises(MalformedBatch):
            wb.decode(bytes(bad))


def test_flipped_data_byte_is_a_checksum_error() -> None:
    bad = bytearray(wb.encode(make_batch()))
    bad[wb.HEADER_SIZE + 100] ^= 1
    with pytest.raises(MalformedBatch, match="checksum"):
        wb.decode(bytes(bad))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(magic=b"DRCX"), "magic"),
        (dict(version=2), "version"),
        (dict(version=0), "version"),
        (dict(flags=4), "flags"),
        (dict(reserved=1), "reserved"),
        (dict(mode=0), "mode"),
        (dict(mode=5), "mode"),
        (dict(accuracy=9), "accuracy"),
        (dict(generation=0), "generation"),
        (dict(seq=0), "seq"),
        (dict(wnum_first=5, wnum_hi=4), "wnum_first"),
        (dict(ntags=65), "too many tags"),
    ],
)
def test_bad_header_fields(fields: dict[str, Any], match: str) -> None:
    buf = raw_batch(**fields)
    with pytest.raises(MalformedBatch, match=match):
        wb.decode(buf)
    with pytest.raises(MalformedBatch, match=match):
        wb.parse_header(buf)


def test_valid_raw_batch_decodes() -> None:
    out = wb.decode(raw_batch(rec(10, 3), nrecords=1, wnum_first=0, wnum_hi=0))
    assert out.records == [wb.Record(10, b"xxx")]


@pytest.mark.parametrize("delta", [-1, 1, 1 << 40, (1 << 64) - 1])
def test_body_len_mismatch(delta: int) -> None:
    body = rec(0, 4)
    body_len = min(len(body) + delta, (1 << 64) - 1) if delta > 0 else len(body) + delta
    with pytest.raises(MalformedBatch):
        wb.decode(raw_batch(body, body_len=body_len, nrecords=1))


def test_record_bounds_against_disk_size() -> None:
    ok = raw_batch(rec(4092, 4), nrecords=1)
    assert wb.decode(ok, disk_size=4096).records[0].offset == 4092
    assert wb.decode(ok).records[0].offset == 4092  # no disk size: no bound
    for offset, length in ((4093, 4), (4096, 1), ((1 << 64) - 1, 2)):
        with pytest.raises(MalformedBatch, match="beyond disk size"):
            wb.decode(raw_batch(rec(offset, length), nrecords=1), disk_size=4096)
    encoded = wb.encode(make_batch())
    with pytest.raises(MalformedBatch, match="beyond disk size"):
        wb.decode(encoded, disk_size=4096)


def test_zero_length_record() -> None:
    with pytest.raises(MalformedBatch, match="bad length 0"):
        wb.decode(raw_batch(rec(0, 0) + rec(0, 17), nrecords=2))


def test_record_reserved_field() -> None:
    with pytest.raises(MalformedBatch, match="reserved"):
        wb.decode(raw_batch(rec(0, 4, reserved=1), nrecords=1))


def test_record_length_past_body() -> None:
    with pytest.raises(MalformedBatch):
        wb.decode(raw_batch(wb.RECORD.pack(0, 100, 0) + b"x" * 40, nrecords=1))


def test_left_over_bytes() -> None:
    with pytest.raises(MalformedBatch, match="left over"):
        wb.decode(raw_batch(rec(0, 4) + rec(8, 4), nrecords=1))
    with pytest.raises(MalformedBatch, match="left over"):
        wb.decode(raw_batch(b"\0" * 3))


def test_bad_tags() -> None:
    too_long = wb.TAG_LEN.pack(4097) + b"t" * 4097
    with pytest.raises(MalformedBatch, match="tag length"):
        wb.decode(raw_batch(too_long, ntags=1))
    with pytest.raises(MalformedBatch, match="tag length"):
        wb.decode(raw_batch(wb.TAG_LEN.pack(50) + b"t" * 10, ntags=1))
    with pytest.raises(MalformedBatch):
        wb.decode(raw_batch(wb.TAG_LEN.pack(2) + b"ab", ntags=2))
    assert wb.decode(raw_batch(wb.TAG_LEN.pack(4096) + b"t" * 4096, ntags=1)).tags == [b"t" * 4096]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (b"", dict(nrecords=(1 << 32) - 1)),
        (rec(0, 1), dict(nrecords=(1 << 32) - 1)),
        (rec(0, 1), dict(ntags=64)),
        (wb.TAG_LEN.pack((1 << 32) - 1) + b"x" * 64, dict(ntags=1)),
        (wb.RECORD.pack(0, (1 << 32) - 1, 0) + b"x" * 64, dict(nrecords=1)),
    ],
)
def test_huge_declared_sizes_fail_fast(body: bytes, fields: dict[str, int]) -> None:
    buf = raw_batch(body, **fields)
    huge_body = raw_batch(body, body_len=(1 << 64) - 1, **fields)
    tracemalloc.start()
    try:
        for candidate in (buf, huge_body):
            with pytest.raises(MalformedBatch):
                wb.decode(candidate)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_max_bytes() -> None:
    buf = wb.encode(make_batch())
    assert wb.decode(buf, max_bytes=len(buf))
    with pytest.raises(MalformedBatch, match="larger than"):
        wb.decode(buf, max_bytes=len(buf) - 1)


def test_non_contiguous_buffer_rejected() -> None:
    buf = wb.encode(make_batch())
    with pytest.raises(MalformedBatch):
        wb.decode(memoryview(buf + buf)[::2])


@pytest.mark.parametrize(
    "overrides",
    [
        dict(disk_id=b"short"),
        dict(generation=0),
        dict(seq=0),
        dict(seq=1 << 64),
        dict(wnum_first=9, wnum_hi=8),
        dict(flags=8),
        dict(mode=7),
        dict(tags=[b"t"] * 65),
        dict(tags=[b"t" * 4097]),
        dict(records=[wb.Record(0, b"")]),
        dict(records=[wb.Record(-1, b"x")]),
        dict(records=[wb.Record((1 << 64) - 1, b"xy")]),
    ],
)
def test_encode_rejects_invalid(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        wb.encode(make_batch(**overrides))


def test_encode_large_batch() -> None:
    records = [wb.Record(i * 4096, bytes([i % 256]) * 4096) for i in range(1024)]
    batch = make_batch(records=records)
    buf = wb.encode(batch)
    out = wb.decode(buf, disk_size=1024 * 4096)
    assert wb.total_data_bytes(out) == 4 << 20
    assert out.records[1023].offset == 1023 * 4096 and bytes(out.records[5].data) == b"\x05" * 4096
