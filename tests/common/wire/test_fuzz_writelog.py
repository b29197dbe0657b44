"""Fuzz of the workload's write log (common/wire/writelog.py), a file a killed workload leaves
torn: a cut at any length reads as a prefix of what was written, and hostile bytes give a value
or WriteLogError (with a crc made to match, so the field checks behind it are reached too)."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import datagen
from common.wire import writelog as wl
from tests.fuzzing import fuzz, fuzz_seed, mutated  # noqa: F401

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("fuzz_seed")]

PROF = datagen.profile("mixed")
HEADER = wl.encode_header(42, PROF)
records = st.lists(st.builds(wl.LogRecord, st.integers(1, 2**40), st.integers(0, 0xFFFF),
                             st.sampled_from(wl._KINDS), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                             st.integers(0, 2**64 - 1)), max_size=6).map(
    lambda rs: sorted({r.wnum: r for r in rs}.values(), key=lambda r: r.wnum))


def log_bytes(recs: list[wl.LogRecord]) -> bytes:
    return HEADER + b"".join(wl.encode_record(r) for r in recs)


def rechecked(buf: bytes, plen: int) -> bytes:
    """``buf`` with its header crc recomputed over the (possibly edited) header and params."""
    end = wl.HEADER.size + plen
    if len(buf) < end + 4:
        return buf
    return buf[:end] + zlib.crc32(buf[:end]).to_bytes(4, "little") + buf[end + 4:]


@fuzz(300)
@given(records, st.data())
def test_a_cut_at_any_length_reads_as_a_prefix(recs: list[wl.LogRecord], data: st.DataObject) -> None:
    full = log_bytes(recs)
    cut = data.draw(st.integers(0, len(full)))
    header, got, valid = wl._scan(full[:cut])
    if cut < len(HEADER):
        assert header is None and got == [] and valid == 0
    else:
        assert header is not None and header.seed == 42
        assert got == recs[:(cut - len(HEADER)) // wl.RECORD.size]
        assert valid == len(HEADER) + len(got) * wl.RECORD.size


params = st.one_of(st.binary(max_size=80), st.integers(1, 5000).map(lambda n: b"[" * n),
                   st.sampled_from([b"[]", b"1", b'"x"', b'{"zero_share": []}', b'{"text_share": "x"}', b"{}",
                                    b'{"zero_share": {"a": 1}}', b"\xff\xfe"]))


@fuzz(300)
@given(st.integers(0, 2**32 - 1), params, st.booleans())
def test_hostile_header_with_a_matching_crc(profile_id: int, raw: bytes, known_id: bool) -> None:
    """Unknown profile ids, params that are not an object of numbers, deep nesting: WriteLogError."""
    if known_id:
        profile_id = profile_id % 3
    body = wl.HEADER.pack(wl.MAGIC, wl.VERSION, 0, 1, profile_id, len(raw)) + raw
    try:
        header = wl.decode_header(body + zlib.crc32(body).to_bytes(4, "little"))
    except wl.WriteLogError:
        return
    assert header is not None
    assert isinstance(header.profile.zero_share + header.profile.text_share, float)


@fuzz(250)
@given(records.flatmap(lambda rs: mutated(log_bytes(rs))), st.booleans())
def test_mutated_log(buf: bytes, fix_crc: bool) -> None:
    plen = len(PROF.params_json())
    if fix_crc:
        buf = rechecked(buf, plen)
    try:
        header, got, valid = wl._scan(buf)
    except wl.WriteLogError:
        return
    assert valid <= len(buf)
    assert all(a.wnum < b.wnum for a, b in zip(got, got[1:], strict=False))
    assert all(r.kind in wl._KINDS for r in got)


@fuzz(200)
@given(st.binary(max_size=200), st.integers(-5, 300))
def test_decode_record_anywhere(buf: bytes, pos: int) -> None:
    rec = wl.decode_record(buf, pos)
    assert rec is None or (0 <= pos and len(buf) - pos >= wl.RECORD.size)


def test_a_params_length_claiming_gigabytes_is_refused() -> None:
    body = wl.HEADER.pack(wl.MAGIC, wl.VERSION, 0, 1, 1, 2**32 - 1)
    with pytest.raises(wl.WriteLogError, match="exceeds"):
        wl.decode_header(body + b"{}")
