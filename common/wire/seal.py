"""Sealed batch (PS -> MT): an encoded change batch, lz4-framed, then AES-256-GCM sealed.

Layout (little-endian)::

    HEADER (92 bytes): magic b"DRSB", version u16 = 1, flags u16 (bit 0 = compressed),
        key_epoch u32, disk_id 16s, generation u64, seq u64, sender_id 16s, incarnation u64,
        counter u64, plain_len u64 (change-batch length before compression),
        cipher_len u64 (bytes after the header: ciphertext + 16-byte GCM tag)
    ciphertext + tag   AES-256-GCM(subkey, nonce, payload, associated_data=HEADER bytes)

Nonces never repeat under a key: the disk key (32 bytes, from the CS, by epoch) is never used
directly. Each :class:`Sealer` derives ``subkey = HKDF-SHA256(disk_key, info=b"drlab-seal-v1" +
generation u64 + sender_id 16s + incarnation u64)`` and counts nonces under it
(``nonce = counter`` as 12 little-endian bytes). A sender picks a fresh random incarnation
(:func:`new_incarnation`) for every Sealer, so a restarted sender, or a second Sealer for the
same disk and generation, gets a fresh subkey. Never hand one incarnation to two Sealers with
the same key, generation and sender id.

:func:`open_sealed` rejects with :class:`common.errors.MalformedBatch` anything malformed and
with :class:`common.errors.TamperedSeal` anything that fails authentication (which includes a
wrong key for the epoch). It also checks that the inner change batch's header names the same
disk, generation and seq as the seal. Bounds are checked before decrypting: ``plain_len`` at most
``max_plain``, and for a compressed payload at most :data:`LZ4_MAX_RATIO` times the payload (no
lz4 frame inflates more), so a small seal never makes the receiver allocate a large buffer.
"""

from __future__ import annotations

import secrets
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import lz4.frame
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common import formats
from common.errors import MalformedBatch, TamperedSeal
from common.wire import batch as wbatch

MAGIC = b"DRSB"
VERSION = 1
HEADER = struct.Struct("<4sHHI16sQQ16sQQQQ")
_INFO = struct.Struct("<Q16sQ")
assert HEADER.size == 92
assert _INFO.size == 32

HEADER_SIZE = HEADER.size
TAG_SIZE = 16
KEY_LEN = 32
ID_LEN = 16
FLAG_COMPRESSED = 1
MAX_PLAIN = 64 << 20
LZ4_MAX_RATIO = 255  # an lz4 frame never inflates more than this: plain_len above it is refused unread
INFO_PREFIX = b"drlab-seal-v1"
_COUNTER_LIMIT = (1 << 64) - 1  # counters 0 .. 2**64-2 are usable
_CACHE_SIZE = 256


@dataclass(frozen=True)
class SealHeader:
    flags: int
    key_epoch: int
    disk_id: bytes
    generation: int
    seq: int
    sender_id: bytes
    incarnation: int
    counter: int
    plain_len: int
    cipher_len: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESSED)


def new_incarnation() -> int:
    """A random u64 for a new Sealer (a sender picks one at every start)."""
    return secrets.randbits(64)


def derive_subkey(key: bytes, generation: int, sender_id: bytes, incarnation: int) -> bytes:
    """The per-(generation, sender, incarnation) AES-256 key nonces are counted under."""
    if len(key) != KEY_LEN or len(sender_id) != ID_LEN:
        raise ValueError("key must be 32 bytes and sender_id 16 bytes")
    info = INFO_PREFIX + _INFO.pack(generation, sender_id, incarnation)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None, info=info).derive(key)


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "little")


# ---------------------------------------------------------------- seal


class Sealer:
    """Seals the change batches of one disk and generation; thread-safe.

    ``incarnation`` defaults to a fresh random value; pass one only if you know it is unique.
    """

    def __init__(self, key: bytes, key_epoch: int, disk_id: bytes, generation: int,
                 sender_id: bytes, incarnation: int | None = None, *, compress: bool = True):
        if len(disk_id) != ID_LEN or not 0 <= key_epoch < (1 << 32) or not 1 <= generation <= _COUNTER_LIMIT:
            raise ValueError("bad disk_id, key_epoch or generation")
        if incarnation is not None and not 0 <= incarnation <= _COUNTER_LIMIT:
            raise ValueError("incarnation must be a u64")
        self.key_epoch = key_epoch
        self.disk_id = bytes(disk_id)
        self.generation = generation
        self.sender_id = bytes(sender_id)
        self.incarnation = new_incarnation() if incarnation is None else incarnation
        self.compress = compress
        self._aead = AESGCM(derive_subkey(key, generation, self.sender_id, self.incarnation))
        self._lock = threading.Lock()
        self._next = 0

    def __repr__(self) -> str:
        return (f"Sealer(key_epoch={self.key_epoch}, disk_id={self.disk_id.hex()}, "
                f"generation={self.generation}, sender_id={self.sender_id.hex()}, "
                f"incarnation={self.incarnation}, counter={self._next})")

    @property
    def counter(self) -> int:
        """The counter the next seal will use."""
        return self._next

    def _take_counter(self) -> int:
        with self._lock:
            counter = self._next
            if counter >= _COUNTER_LIMIT:
                raise OverflowError("nonce counter exhausted: make a new Sealer")
            self._next = counter + 1
            return counter

    def seal(self, seq: int, batch_bytes: bytes | bytearray | memoryview) -> bytes:
        """Seal one encoded change batch whose header must name this disk, generation and seq.

        Raises ValueError for a batch of another identity or above MAX_PLAIN bytes
        (MalformedBatch if ``batch_bytes`` is not a change batch at all).
        """
        if len(batch_bytes) > MAX_PLAIN:
            raise ValueError(f"batch larger than {MAX_PLAIN} bytes")
        hdr = wbatch.parse_header(batch_bytes)
        if (hdr.disk_id, hdr.generation, hdr.seq) != (self.disk_id, self.generation, seq):
            raise ValueError("batch header does not match the sealer's disk/generation or seq")
        payload = lz4.frame.compress(batch_bytes) if self.compress else bytes(batch_bytes)
        counter = self._take_counter()
        header = HEADER.pack(
            MAGIC, VERSION, FLAG_COMPRESSED if self.compress else 0, self.key_epoch, self.disk_id,
            self.generation, seq, self.sender_id, self.incarnation, counter,
            len(batch_bytes), len(payload) + TAG_SIZE,
        )
        return header + self._aead.encrypt(_nonce(counter), payload, header)


# ---------------------------------------------------------------- open

_cache: OrderedDict[tuple[bytes, int, bytes, int], AESGCM] = OrderedDict()
_cache_lock = threading.Lock()


def _aead_for(key: bytes, hdr: SealHeader) -> AESGCM:
    ident = (key, hdr.generation, hdr.sender_id, hdr.incarnation)
    with _cache_lock:
        aead = _cache.get(ident)
        if aead is not None:
            _cache.move_to_end(ident)
            return aead
    aead = AESGCM(derive_subkey(key, hdr.generation, hdr.sender_id, hdr.incarnation))
    with _cache_lock:
        _cache[ident] = aead
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return aead


def _payload_bound(plain_len: int) -> int:
    """Largest lz4 frame a ``plain_len``-byte input can compress to (generous)."""
    return plain_len + plain_len // 128 + 1024


def parse_header(buf: bytes | bytearray | memoryview, *, max_plain: int = MAX_PLAIN) -> SealHeader:
    """Parse and bound-check the header of a whole sealed batch ``buf`` (not authenticated)."""
    if len(buf) < HEADER_SIZE + TAG_SIZE:
        raise MalformedBatch(f"sealed batch too short ({len(buf)} bytes)")
    (magic, version, flags, epoch, disk_id, gen, seq, sender, inc, counter,
     plain_len, cipher_len) = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise MalformedBatch("bad seal magic")
    formats.check("sealed batch", version, VERSION, MalformedBatch)
    if flags & ~FLAG_COMPRESSED:
        raise MalformedBatch("unknown seal flags")
    if gen < 1 or seq < 1 or counter >= _COUNTER_LIMIT:
        raise MalformedBatch("bad generation, seq or counter")
    if cipher_len != len(buf) - HEADER_SIZE:
        raise MalformedBatch(f"cipher_len {cipher_len} does not match a {len(buf)}-byte seal")
    if not wbatch.HEADER_SIZE + wbatch.TRAILER_SIZE <= plain_len <= max_plain:
        raise MalformedBatch(f"plain_len {plain_len} out of bounds (max {max_plain})")
    payload_len = cipher_len - TAG_SIZE
    if payload_len > _payload_bound(plain_len) or (not flags & FLAG_COMPRESSED and payload_len != plain_len) \
            or plain_len > LZ4_MAX_RATIO * payload_len:  # a tiny payload never makes plain_len bytes
        raise MalformedBatch(f"payload of {payload_len} bytes inconsistent with plain_len {plain_len}")
    return SealHeader(flags, epoch, bytes(disk_id), gen, seq, bytes(sender), inc, counter, plain_len, cipher_len)


def open_sealed(
    buf: bytes | bytearray | memoryview,
    key_for_epoch: Callable[[int], bytes],
    *,
    max_plain: int = MAX_PLAIN,
) -> tuple[SealHeader, bytes]:
    """Authenticate, decrypt and decompress a sealed batch; return its header and the change batch.

    ``key_for_epoch(epoch)`` returns the 32-byte disk key of that epoch. If it raises
    ``LookupError`` the seal is rejected as MalformedBatch (code ``unknown_key_epoch``); any other
    exception (e.g. ``common.errors.Unavailable`` for an epoch not known *yet*) propagates.
    """
    mv = wbatch.byte_view(buf)
    hdr = parse_header(mv, max_plain=max_plain)
    try:
        key = key_for_epoch(hdr.key_epoch)
    except LookupError as exc:
        raise MalformedBatch(f"unknown key epoch {hdr.key_epoch}", code="unknown_key_epoch") from exc
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_LEN:
        raise MalformedBatch(f"no usable key for epoch {hdr.key_epoch}", code="unknown_key_epoch")
    try:
        payload = _aead_for(bytes(key), hdr).decrypt(_nonce(hdr.counter), mv[HEADER_SIZE:], mv[:HEADER_SIZE])
    except InvalidTag as exc:
        raise TamperedSeal("sealed batch failed authentication") from exc
    plain = _decompress(payload, hdr.plain_len) if hdr.compressed else payload
    _check_inner(hdr, plain)
    return hdr, plain


def _decompress(payload: bytes, plain_len: int) -> bytes:
    """lz4-frame decompress, never producing more than ``plain_len`` bytes."""
    dec = lz4.frame.LZ4FrameDecompressor()
    try:
        out = dec.decompress(payload, max_length=plain_len)
        if not dec.eof:
            extra = dec.decompress(b"", max_length=1)
            if extra or not dec.eof:
                raise MalformedBatch("compressed payload longer than plain_len or truncated")
    except (RuntimeError, ValueError) as exc:
        raise MalformedBatch(f"bad lz4 frame: {exc}") from exc
    if len(out) != plain_len or dec.unused_data:
        raise MalformedBatch("decompressed length differs from plain_len or trailing data")
    return out


def _check_inner(hdr: SealHeader, plain: bytes) -> None:
    inner = wbatch.parse_header(plain)
    if (inner.disk_id, inner.generation, inner.seq) != (hdr.disk_id, hdr.generation, hdr.seq):
        raise MalformedBatch("sealed batch header does not match the change batch inside")
