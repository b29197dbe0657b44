"""Disk data keys at rest: sealed with the account store's key, opened only for a settings document.

A disk's 32-byte key (made when protection starts, cs/disks.py) is kept in ``disks.key_b64`` as
``sealed:`` + AES-GCM(b64(key)) under the account store's key (cs/accounts.py, in the CS's data
directory), bound to the disk id, so a copy of the database alone reveals no key. The PS's and
MT's settings documents carry the key in clear (over mTLS) as before: :func:`reveal_in` opens
them. A value without the prefix (stored by an older CS) is read as the key's base64.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from cs.db.meta import SEALED, Sealer

KEY_BYTES = 32


def _bound(disk_id: str) -> str:
    return f"disk-key:{disk_id}"


def new(sealer: Sealer, disk_id: str) -> str:
    """A fresh key for ``disk_id``, sealed: what ``disks.key_b64`` keeps."""
    return SEALED + sealer.seal(_bound(disk_id), base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode())


def reveal(sealer: Sealer, disk_id: str, stored: str | None) -> str | None:
    """The key's base64 (None when the disk has none)."""
    if stored is None or not stored.startswith(SEALED):
        return stored
    return sealer.open(_bound(disk_id), stored.removeprefix(SEALED))


def reveal_in(sealer: Sealer, document: dict[str, Any]) -> dict[str, Any]:
    """A PS's or MT's settings document with every disk's key opened (in place; returned)."""
    for disk in document.get("disks", []):
        if "key_b64" in disk:
            disk["key_b64"] = reveal(sealer, disk["disk_id"], disk["key_b64"])
    return document
