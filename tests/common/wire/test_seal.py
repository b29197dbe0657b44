"""Sealed batch: round trips, tampering, key epochs, nonce uniqueness, decompression caps."""

from __future__ import annotations

import os
import threading
import tracemalloc

import lz4.frame
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.errors import MalformedBatch, TamperedSeal, Unavailable
from common.wire import batch as wb
from common.wire import seal as ws

KEY = bytes(range(32))
KEY2 = bytes(range(1, 33))
DISK = bytes.fromhex("00112233445566778899aabbccddeeff")
SENDER = b"S" * 16
KEYS = {1: KEY, 2: KEY2}


def batch_bytes(seq: int = 1, generation: int = 2, size: int = 8192, disk_id: bytes = DISK) -> bytes:
    rec = wb.Record(0, (b"0123456789abcdef" * (size // 16 + 1))[:size])
    return wb.encode(wb.ChangeBatch(disk_id, generation, seq, 1, 1, 10, 20, wb.Mode.DATA, wb.Accuracy.EXACT,
                                    0, [b"tag"], [rec]))


def sealer(**kw: object) -> ws.Sealer:
    args: dict[str, object] = dict(key=KEY, key_epoch=1, disk_id=DISK, generation=2, sender_id=SENDER)
    args.update(kw)
    return ws.Sealer(**args)  # type: ignore[arg-type]


def forge(plain_len: int, payload: bytes, *, seq: int = 1, flags: int = ws.FLAG_COMPRESSED,
          incarnation: int = 5, counter: int = 0) -> bytes:
    """A correctly authenticated seal with whatever header and payload, as a rogue PS could make."""
    header = ws.HEADER.pack(ws.MAGIC, ws.VERSION, flags, 1, DISK, 2, seq, SENDER, incarnation, counter,
                            plain_len, len(payload) + ws.TAG_SIZE)
    aead = AESGCM(ws.derive_subkey(KEY, 2, SENDER, incarnation))
    return header + aead.encrypt(counter.to_bytes(12, "little"), payload, header)


def test_struct_sizes() -> None:
    assert ws.HEADER.size == ws.HEADER_SIZE == 92


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip(compress: bool) -> None:
    s = sealer(compress=compress)
    plain = batch_bytes(seq=9)
    sealed = s.seal(9, plain)
    hdr, out = ws.open_sealed(sealed, KEYS.__getitem__)
    assert out == plain
    assert (hdr.disk_id, hdr.generation, hdr.seq, hdr.key_epoch) == (DISK, 2, 9, 1)
    assert (hdr.sender_id, hdr.incarnation, hdr.counter, hdr.plain_len) == (SENDER, s.incarnation, 0, len(plain))
    assert hdr.compressed is compress
    assert hdr.cipher_len == len(sealed) - ws.HEADER_SIZE
    if compress:
        assert len(sealed) < len(plain)
    assert ws.open_sealed(memoryview(sealed), KEYS.__getitem__)[1] == plain
    assert ws.open_sealed(bytearray(sealed), KEYS.__getitem__)[1] == plain


def test_counter_advances_and_nonces_differ() -> None:
    s = sealer()
    a, b = s.seal(1, batch_bytes(1)), s.seal(2, batch_bytes(2))
    assert ws.parse_header(a).counter == 0 and ws.parse_header(b).counter == 1
    assert s.counter == 2


def test_repr_hides_key() -> None:
    text = repr(sealer())
    assert KEY.hex() not in text and repr(KEY) not in text and "key=" not in text.replace("key_epoch", "")
    assert DISK.hex() in text


def test_seal_checks_the_batch_identity() -> None:
    s = sealer()
    with pytest.raises(ValueError):
        s.seal(2, batch_bytes(seq=1))
    with pytest.raises(ValueError):
        s.seal(1, batch_bytes(generation=3))
    with pytest.raises(ValueError):
        s.seal(1, batch_bytes(disk_id=b"\x01" * 16))
    with pytest.raises(MalformedBatch):
        s.seal(1, b"not a batch")


@pytest.mark.parametrize(
    "kw", [dict(key=b"short"), dict(disk_id=b"x"), dict(sender_id=b"x"), dict(generation=0),
           dict(key_epoch=-1), dict(key_epoch=1 << 32), dict(incarnation=1 << 64)],
)
def test_sealer_rejects_bad_arguments(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        sealer(**kw)


def test_default_incarnations_are_fresh() -> None:
    assert len({sealer().incarnation for _ in range(20)}) == 20
    assert sealer(incarnation=7).incarnation == 7


def test_subkeys_depend_on_every_input() -> None:
    base = ws.derive_subkey(KEY, 2, SENDER, 5)
    others = {ws.derive_subkey(KEY2, 2, SENDER, 5), ws.derive_subkey(KEY, 3, SENDER, 5),
              ws.derive_subkey(KEY, 2, b"T" * 16, 5), ws.derive_subkey(KEY, 2, SENDER, 6)}
    assert len(base) == 32 and base != KEY and base not in others and len(others) == 4


def test_counter_exhaustion() -> None:
    s = sealer()
    s._next = 2**64 - 2
    sealed = s.seal(1, batch_bytes(1))
    assert ws.open_sealed(sealed, KEYS.__getitem__)[0].counter == 2**64 - 2
    with pytest.raises(OverflowError):
        s.seal(2, batch_bytes(2))


def test_nonces_never_repeat_across_threads() -> None:
    s = sealer(compress=False)
    plains = {seq: batch_bytes(seq, size=64) for seq in range(1, 3)}
    seen: list[list[int]] = [[], []]
    barrier = threading.Barrier(2)

    def work(idx: int) -> None:
        barrier.wait()
        for _ in range(2000):
            seq = idx + 1
            seen[idx].append(ws.parse_header(s.seal(seq, plains[seq])).counter)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    counters = seen[0] + seen[1]
    assert len(counters) == 4000 and len(set(counters)) == 4000
    assert set(counters) == set(range(4000)) and s.counter == 4000


def test_every_flipped_byte_is_rejected() -> None:
    sealed = sealer().seal(1, batch_bytes(size=256))
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x20
        with pytest.raises((MalformedBatch, TamperedSeal)):
            ws.open_sealed(bytes(bad), KEYS.__getitem__)


@pytest.mark.parametrize(
    ("field_offset", "name"),
    [(12, "disk_id"), (28, "generation"), (36, "seq"), (44, "sender_id"), (60, "incarnation"),
     (68, "counter"), (76, "plain_len")],
)
def test_tampered_header_fields(field_offset: int, name: str) -> None:
    sealed = bytearray(sealer().seal(1, batch_bytes(size=256)))
    sealed[field_offset] ^= 0x04
    with pytest.raises(TamperedSeal):
        ws.open_sealed(bytes(sealed), KEYS.__getitem__)


@pytest.mark.parametrize("where", ["ciphertext", "tag"])
def test_tampered_body(where: str) -> None:
    sealed = bytearray(sealer().seal(1, batch_bytes()))
    sealed[ws.HEADER_SIZE + 3 if where == "ciphertext" else -3] ^= 0x80
    with pytest.raises(TamperedSeal) as info:
        ws.open_sealed(bytes(sealed), KEYS.__getitem__)
    assert info.value.status == 400 and info.value.code == "tampered_seal"


def test_key_epochs() -> None:
    sealed = sealer(key=KEY2, key_epoch=2).seal(1, batch_bytes())
    assert ws.open_sealed(sealed, KEYS.__getitem__)[0].key_epoch == 2
    with pytest.raises(TamperedSeal):  # the right epoch number but another key
        ws.open_sealed(sealed, {2: KEY}.__getitem__)
    with pytest.raises(MalformedBatch) as info:
        ws.open_sealed(sealed, {1: KEY}.__getitem__)
    assert info.value.code == "unknown_key_epoch"
    with pytest.raises(MalformedBatch):
        ws.open_sealed(sealed, lambda epoch: b"short")

    def not_yet(epoch: int) -> bytes:
        raise Unavailable(f"epoch {epoch} not known yet")

    with pytest.raises(Unavailable):
        ws.open_sealed(sealed, not_yet)


def test_header_checks() -> None:
    sealed = sealer().seal(1, batch_bytes())
    for n in (0, 10, ws.HEADER_SIZE, ws.HEADER_SIZE + 15, len(sealed) - 1):
        with pytest.raises(MalformedBatch):
            ws.open_sealed(sealed[:n], KEYS.__getitem__)
    with pytest.raises(MalformedBatch, match="cipher_len"):
        ws.open_sealed(sealed + b"\0", KEYS.__getitem__)
    for offset, value in ((0, b"XXXX"), (4, b"\x02\x00"), (6, b"\x02\x00")):
        bad = bytearray(sealed)
        bad[offset:offset + len(value)] = value
        with pytest.raises(MalformedBatch):
            ws.open_sealed(bytes(bad), KEYS.__getitem__)


def test_plain_len_cap_before_decrypt() -> None:
    plain = batch_bytes(size=4096)
    sealed = sealer().seal(1, plain)
    with pytest.raises(MalformedBatch, match="plain_len"):
        ws.open_sealed(sealed, KEYS.__getitem__, max_plain=len(plain) - 1)
    huge = forge((1 << 64) - 1, b"x" * 64)
    with pytest.raises(MalformedBatch, match="plain_len"):
        ws.open_sealed(huge, KEYS.__getitem__)


def test_decompression_bomb_is_capped() -> None:
    small = batch_bytes(size=1024)
    with pytest.raises(MalformedBatch, match="inconsistent"):  # payload far above what plain_len allows
        ws.open_sealed(forge(len(small), lz4.frame.compress(small + b"\0" * (64 << 20))), KEYS.__getitem__)
    inner = batch_bytes(size=2 << 20)
    bomb = lz4.frame.compress(inner + b"\0" * (256 << 20))  # ~1 MB more that inflates to 256 MiB
    sealed = forge(len(inner), bomb)
    tracemalloc.start()
    try:
        with pytest.raises(MalformedBatch, match="longer than plain_len"):
            ws.open_sealed(sealed, KEYS.__getitem__)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_decompressed_length_must_match() -> None:
    inner = batch_bytes(size=1024)
    with pytest.raises(MalformedBatch):  # frame shorter than announced
        ws.open_sealed(forge(len(inner) + 10, lz4.frame.compress(inner)), KEYS.__getitem__)
    with pytest.raises(MalformedBatch):  # not an lz4 frame
        ws.open_sealed(forge(len(inner), os.urandom(200)), KEYS.__getitem__)
    with pytest.raises(MalformedBatch):  # truncated frame
        ws.open_sealed(forge(len(inner), lz4.frame.compress(inner)[:-6]), KEYS.__getitem__)
    with pytest.raises(MalformedBatch):  # trailing bytes after the frame
        ws.open_sealed(forge(len(inner), lz4.frame.compress(inner) + b"junk"), KEYS.__getitem__)
    hdr, out = ws.open_sealed(forge(len(inner), lz4.frame.compress(inner)), KEYS.__getitem__)
    assert out == inner


def test_uncompressed_payload_must_match_plain_len() -> None:
    inner = batch_bytes(size=1024)
    with pytest.raises(MalformedBatch):
        ws.open_sealed(forge(len(inner) - 1, inner, flags=0), KEYS.__getitem__)
    assert ws.open_sealed(forge(len(inner), inner, flags=0), KEYS.__getitem__)[1] == inner


def test_inner_batch_must_match_seal_header() -> None:
    inner = batch_bytes(seq=1)
    with pytest.raises(MalformedBatch, match="does not match"):
        ws.open_sealed(forge(len(inner), lz4.frame.compress(inner), seq=2), KEYS.__getitem__)
    junk = b"J" * 200
    with pytest.raises(MalformedBatch):
        ws.open_sealed(forge(len(junk), junk, flags=0), KEYS.__getitem__)


def test_subkey_cache_is_bounded() -> None:
    inner = batch_bytes()
    for inc in range(ws._CACHE_SIZE + 40):
        sealed = forge(len(inner), inner, flags=0, incarnation=inc)
        assert ws.open_sealed(sealed, KEYS.__getitem__)[1] == inner
    assert len(ws._cache) <= ws._CACHE_SIZE
