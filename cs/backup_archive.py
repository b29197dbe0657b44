"""The encrypted archive of ``drlab cs backup`` (cs/backup.py): its format, sealing and opening; pure
(no file, no database: bytes in, bytes out).

The archive holds secrets, so it is encrypted. Format (all integers big-endian)::

    b"DRLABBK1" | u32 n | header: n bytes of JSON {format, kdf: {n, r, p, salt}, nonce_prefix, chunk_bytes}
    then chunks: u32 m | m bytes of AES-256-GCM ciphertext + tag

The key is scrypt(password, salt) (the password is the CS passphrase or a separate backup
password, read from a file or stdin, never from argv). Chunk i uses nonce = nonce_prefix (8
bytes) || u32 i and authenticates sha256(header) || u64 i || final flag, so a changed header,
a reordered, dropped or appended chunk, a truncation and a wrong password all fail the tag and
the restore refuses the archive before it writes anything. The plaintext is a tar stream.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common import errors

MAGIC = b"DRLABBK1"
FORMAT = 1
CHUNK_BYTES = 1 << 20
MAX_HEADER_BYTES = 4096
KDF = {"n": 2**15, "r": 8, "p": 1}


@dataclass(frozen=True)
class Password:
    """The archive password; never shown."""

    value: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "Password(***)"

    @classmethod
    def from_text(cls, text: str) -> Password:
        value = text.strip()
        if len(value) < 8:
            raise errors.ConfigError("the backup password must have at least 8 characters")
        return cls(value.encode())


def _key(password: Password, salt: bytes, kdf: dict[str, int]) -> bytes:
    return hashlib.scrypt(password.value, salt=salt, n=kdf["n"], r=kdf["r"], p=kdf["p"], dklen=32,
                          maxmem=128 * 1024 * 1024)


def _aad(header_hash: bytes, index: int, final: bool) -> bytes:
    return header_hash + struct.pack(">QB", index, int(final))


def seal(plaintext: bytes, password: Password, out: BinaryIO, *, kdf: dict[str, int] | None = None) -> None:
    """Write the encrypted archive of ``plaintext`` to ``out``."""
    params = dict(kdf or KDF)
    salt, prefix = os.urandom(16), os.urandom(8)
    header = json.dumps({"format": FORMAT, "kdf": {**params, "salt": base64.b64encode(salt).decode()},
                         "nonce_prefix": base64.b64encode(prefix).decode(), "chunk_bytes": CHUNK_BYTES},
                        sort_keys=True).encode()
    aead, header_hash = AESGCM(_key(password, salt, params)), hashlib.sha256(header).digest()
    out.write(MAGIC + struct.pack(">I", len(header)) + header)
    chunks = [plaintext[i:i + CHUNK_BYTES] for i in range(0, len(plaintext), CHUNK_BYTES)] or [b""]
    for i, chunk in enumerate(chunks):
        sealed = aead.encrypt(prefix + struct.pack(">I", i), chunk, _aad(header_hash, i, i == len(chunks) - 1))
        out.write(struct.pack(">I", len(sealed)) + sealed)


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise errors.BadRequest(f"the backup archive is truncated ({what})")
    return data


def open_sealed(src: BinaryIO, password: Password) -> bytes:
    """The plaintext of an archive; BadRequest if it is not one, was changed, or the password is wrong."""
    if src.read(len(MAGIC)) != MAGIC:
        raise errors.BadRequest("not a drlab CS backup archive")
    (hlen,) = struct.unpack(">I", _read_exact(src, 4, "header length"))
    if hlen > MAX_HEADER_BYTES:
        raise errors.BadRequest("the backup archive's header is damaged")
    header = _read_exact(src, hlen, "header")
    try:
        head = json.loads(header)
        kdf = {k: int(head["kdf"][k]) for k in ("n", "r", "p")}
        salt, prefix = base64.b64decode(head["kdf"]["salt"]), base64.b64decode(head["nonce_prefix"])
        if head["format"] != FORMAT or len(prefix) != 8 or kdf["n"] > 2**20 or kdf["r"] > 32 or kdf["p"] > 16:
            raise ValueError("unsupported parameters")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise errors.BadRequest(f"the backup archive's header is damaged: {str(exc)[:200]}") from exc
    try:  # scrypt refuses n, r, p it cannot use (n not a power of 2, over its memory cap ...)
        key = _key(password, salt, kdf)
    except (ValueError, TypeError, OverflowError) as exc:
        raise errors.BadRequest(f"the backup archive's header is damaged: {exc}") from exc
    aead, header_hash = AESGCM(key), hashlib.sha256(header).digest()
    parts: list[bytes] = []
    index, final = 0, False
    while True:
        raw_len = src.read(4)
        if not raw_len:
            break
        if final:
            raise errors.BadRequest("the backup archive has data after its last chunk (changed or damaged)")
        if len(raw_len) < 4:
            raise errors.BadRequest("the backup archive is truncated (chunk length)")
        (clen,) = struct.unpack(">I", raw_len)
        if clen > CHUNK_BYTES + 16:
            raise errors.BadRequest("the backup archive is damaged (chunk too large)")
        sealed = _read_exact(src, clen, "chunk")
        nonce = prefix + struct.pack(">I", index)
        for last in (False, True):
            try:
                parts.append(aead.decrypt(nonce, sealed, _aad(header_hash, index, last)))
                final = last
                break
            except InvalidTag:
                continue
        else:
            raise errors.Unauthorized("the backup archive cannot be decrypted: wrong password, or the archive "
                                      "was changed or damaged", code="backup_refused")
        index += 1
    if not final:
        raise errors.BadRequest("the backup archive is truncated (its last chunk is missing)")
    return b"".join(parts)
