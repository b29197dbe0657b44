"""Fuzz of the change batch and the sealed batch with hostile length fields (2^31 .. 2^64-1),
truncations and extensions, before and behind a valid checksum or authentication tag: only
MalformedBatch / TamperedSeal, and what decoding allocates stays proportional to the input
(a field claiming gigabytes is refused before anything that large is allocated).
(tests/common/wire/test_properties.py has the round trips and single-byte edits.)"""

from __future__ import annotations

import lz4.frame
import pytest
import xxhash
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from common.errors import MalformedBatch, TamperedSeal
from common.wire import batch as wb
from common.wire import seal as ws
from tests.fuzzing import HUGE, fuzz, fuzz_seed, mutated, peak_alloc  # noqa: F401

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("fuzz_seed")]

KEY = bytes(range(32))
DISK = b"D" * 16
SENDER = b"S" * 16
SLACK = 256 << 10  # interpreter noise, exception objects, the subkey cache


def batch_bytes(nrecords: int, size: int, seq: int = 1) -> bytes:
    recs = [wb.Record(i * 8192, bytes([i]) * size) for i in range(nrecords)]
    return wb.encode(wb.ChangeBatch(DISK, 2, seq, 1, 5, 10, 20, wb.Mode.DATA, wb.Accuracy.EXACT, 0, [b"t"], recs))


def resealed(buf: bytes) -> bytes:
    body = buf[:-wb.TRAILER_SIZE] if len(buf) > wb.TRAILER_SIZE else buf
    return body + xxhash.xxh3_128_digest(body)


valid_batches = st.builds(batch_bytes, st.integers(0, 4), st.integers(1, 600))


def check_batch(buf: bytes) -> None:
    try:
        batch = wb.decode(buf, disk_size=1 << 30)
    except MalformedBatch:
        return
    assert wb.encode(batch) == bytes(buf)


@fuzz(400)
@given(valid_batches.flatmap(mutated), st.booleans())
def test_mutated_batch(buf: bytes, fix_checksum: bool) -> None:
    candidate = resealed(buf) if fix_checksum else buf
    check_batch(candidate)
    assert peak_alloc(lambda: wb.decode(candidate, disk_size=1 << 30)) < 2 * len(candidate) + SLACK


FIELDS = {"ntags": (76, 4), "nrecords": (80, 4), "body_len": (84, 8)}  # offset, width in wb.HEADER


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, (_, w) in FIELDS.items() for v in HUGE if v < 2 ** (8 * w)])
def test_a_batch_count_claiming_gigabytes_is_refused_unallocated(name: str, value: int) -> None:
    offset, width = FIELDS[name]
    buf = bytearray(batch_bytes(1, 64))
    buf[offset:offset + width] = value.to_bytes(width, "little")
    assert getattr(wb.parse_header(buf[:wb.HEADER_SIZE]) if name == "ntags" and value <= wb.MAX_TAGS else
                   _raw_header(bytes(buf)), name) == value
    candidate = resealed(bytes(buf))
    with pytest.raises(MalformedBatch):
        wb.decode(candidate)
    assert peak_alloc(lambda: wb.decode(candidate)) < SLACK


def _raw_header(buf: bytes) -> object:
    class Raw:
        ntags, nrecords, body_len = wb.HEADER.unpack_from(buf, 0)[-3:]
    return Raw


def forge(plain_len: int, payload: bytes, flags: int, seq: int = 1) -> bytes:
    """An authenticated seal around any payload: what a PS holding the key could send."""
    header = ws.HEADER.pack(ws.MAGIC, ws.VERSION, flags, 1, DISK, 2, seq, SENDER, 5, 0, plain_len,
                            len(payload) + ws.TAG_SIZE)
    return header + AESGCM(ws.derive_subkey(KEY, 2, SENDER, 5)).encrypt(bytes(12), payload, header)


@st.composite
def authenticated_seals(draw: st.DrawFn) -> bytes:
    inner = draw(valid_batches)
    compressed = draw(st.booleans())
    payload = lz4.frame.compress(inner) if compressed else inner
    payload = draw(st.one_of(st.just(payload), mutated(payload)))
    plain_len = draw(st.one_of(st.just(len(inner)), st.sampled_from(HUGE), st.integers(0, ws.MAX_PLAIN),
                               st.integers(len(inner) - 8, len(inner) + 8)))
    return forge(plain_len % 2**64, payload, ws.FLAG_COMPRESSED if compressed else 0)


def open_it(buf: bytes) -> None:
    try:
        hdr, plain = ws.open_sealed(buf, lambda epoch: KEY)
    except (MalformedBatch, TamperedSeal):
        return
    assert len(plain) == hdr.plain_len and wb.parse_header(plain).seq == hdr.seq


@fuzz(300)
@given(authenticated_seals())
def test_authenticated_but_hostile_seal(buf: bytes) -> None:
    """Behind a valid tag: bad lz4 frames, lying plain_len, garbage batches. A small seal never
    makes the receiver allocate much more than an lz4 frame can inflate to."""
    open_it(buf)
    bound = 257 * len(buf) + SLACK  # lz4 inflates at most 255 times
    assert peak_alloc(lambda: ws.open_sealed(buf, lambda epoch: KEY)) < bound


@fuzz(300)
@given(st.builds(lambda b, c: ws.Sealer(KEY, 1, DISK, 2, SENDER, 5, compress=c).seal(1, b), valid_batches,
                 st.booleans()).flatmap(mutated))
def test_mutated_seal(buf: bytes) -> None:
    open_it(buf)
    assert peak_alloc(lambda: ws.open_sealed(buf, lambda epoch: KEY)) < 3 * len(buf) + SLACK


def test_the_allocation_bound_can_fail() -> None:
    """The measurement the tests above rely on sees a buffer allocated from a length field."""
    assert peak_alloc(lambda: bytearray(4 << 20)) >= 4 << 20
    assert peak_alloc(lambda: lz4.frame.LZ4FrameDecompressor().decompress(lz4.frame.compress(b"x"),
                                                                          max_length=8 << 20)) >= 8 << 20


def test_a_small_seal_claiming_a_large_plain_len_is_refused_before_decrypting() -> None:
    inner = batch_bytes(1, 1024)
    sealed = forge(ws.MAX_PLAIN, lz4.frame.compress(inner), ws.FLAG_COMPRESSED)
    with pytest.raises(MalformedBatch, match="inconsistent with plain_len"):
        ws.open_sealed(sealed, lambda epoch: KEY)
    assert peak_alloc(lambda: ws.open_sealed(sealed, lambda epoch: KEY)) < SLACK


def test_the_most_compressible_real_batch_still_opens() -> None:
    """The ratio bound never refuses what a Sealer makes: zeros compress best (about 242:1)."""
    inner = wb.encode(wb.ChangeBatch(DISK, 2, 1, 1, 5, 10, 20, wb.Mode.DATA, wb.Accuracy.EXACT, 0, [],
                                     [wb.Record(0, bytes(8 << 20))]))
    sealed = ws.Sealer(KEY, 1, DISK, 2, SENDER, 5).seal(1, inner)
    assert len(sealed) * ws.LZ4_MAX_RATIO > len(inner) > len(sealed) * 200
    assert ws.open_sealed(sealed, lambda epoch: KEY)[1] == inner
