"""Enrollment tokens: a single-use credential that lets one agent register without the passphrase.

Text form: ``drlab-enroll-v1.<token_id>.<secret>`` where token_id is 32 lowercase hex digits
and secret is 32 random bytes in unpadded base64url (43 characters). The secret never travels
to the CS: the agent proves knowledge of :attr:`EnrollToken.key` (sha256 of a label and the
secret) with the same HMAC proofs as a passphrase (common/auth.py), the CS keeps that key sealed
at rest (cs/enrollment.py). Pure module: no I/O but :func:`read_token_file`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass, field

from common import errors

PREFIX = "drlab-enroll-v1"
SECRET_BYTES = 32
_HEX_ID = re.compile(r"[0-9a-f]{32}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class EnrollToken:
    """One token; its repr and str show the id only, never the secret or the key."""

    token_id: str
    secret: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"EnrollToken({self.token_id}, ***)"

    __str__ = __repr__

    @property
    def text(self) -> str:
        """The text form (a secret: goes into a 0600 file, never into a log or argv)."""
        return f"{PREFIX}.{self.token_id}.{base64.urlsafe_b64encode(self.secret).decode().rstrip('=')}"

    @property
    def key(self) -> bytes:
        """The 32-byte HMAC key used in place of the passphrase-derived key."""
        return hashlib.sha256(PREFIX.encode() + self.secret).digest()


def new() -> EnrollToken:
    return EnrollToken(secrets.token_hex(16), secrets.token_bytes(SECRET_BYTES))


def parse(text: str) -> EnrollToken:
    """The token of ``text`` (surrounding whitespace ignored); BadRequest naming what is wrong,
    never echoing the text (it may be a real token with a typo)."""
    if not isinstance(text, str):
        raise errors.BadRequest("enrollment token must be a string")
    parts = text.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise errors.BadRequest(f"enrollment token must look like {PREFIX}.<token_id>.<secret>")
    token_id, secret_text = parts[1], parts[2]
    if not _HEX_ID.fullmatch(token_id):
        raise errors.BadRequest("enrollment token id must be 32 lowercase hex digits")
    if not _SECRET.fullmatch(secret_text):
        raise errors.BadRequest("enrollment token secret must be 43 base64url characters")
    try:
        secret = base64.urlsafe_b64decode(secret_text + "=")
    except (binascii.Error, ValueError) as exc:
        raise errors.BadRequest("enrollment token secret is not valid base64url") from exc
    if len(secret) != SECRET_BYTES or base64.urlsafe_b64encode(secret).decode().rstrip("=") != secret_text:
        raise errors.BadRequest("enrollment token secret is not 32 bytes in canonical base64url")
    return EnrollToken(token_id, secret)


def read_token_file(path: str) -> EnrollToken:
    with open(path) as fh:
        return parse(fh.read())
