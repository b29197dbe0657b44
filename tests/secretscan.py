"""Search text, bytes and files for secrets in every form they could leak in.

A :class:`Secret` is a name and the byte strings to look for:

- :func:`of_text` (a passphrase, a password, a token): the UTF-8 text, and its hex and base64
  forms (standard and URL-safe, padded or not);
- :func:`of_key` (a key's raw bytes): the raw bytes, lower and upper hex, base64 and URL-safe
  base64 (padded or not);
- :func:`pem_keys` (every PEM private key in a directory tree): each base64 line of its body and
  its DER bytes (raw and hex) — the header alone proves nothing and is not searched.

Forms shorter than :data:`MIN_FORM` bytes are dropped (they would match by chance). The scan
functions answer :class:`Hit` records (secret, form, where, offset); an empty list is a pass.
Pure but for the file readers.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MIN_FORM = 12
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----\r?\n(.*?)-----END \1-----", re.S)


@dataclass(frozen=True)
class Secret:
    """A secret's name and its searchable forms ``(label, bytes)``; its repr shows no form."""

    name: str
    forms: tuple[tuple[str, bytes], ...]

    def __repr__(self) -> str:
        return f"Secret({self.name}, {len(self.forms)} forms)"


@dataclass(frozen=True)
class Hit:
    secret: str
    form: str
    where: str
    offset: int

    def __str__(self) -> str:
        return f"{self.secret} ({self.form}) in {self.where} at {self.offset}"


def _encodings(raw: bytes) -> list[tuple[str, bytes]]:
    b64, url = base64.b64encode(raw), base64.urlsafe_b64encode(raw)
    return [("hex", raw.hex().encode()), ("HEX", raw.hex().upper().encode()),
            ("base64", b64), ("base64", b64.rstrip(b"=")), ("urlsafe-base64", url),
            ("urlsafe-base64", url.rstrip(b"="))]


def _secret(name: str, forms: Iterable[tuple[str, bytes]]) -> Secret:
    seen: dict[bytes, str] = {}
    for label, form in forms:
        if len(form) >= MIN_FORM and form not in seen:
            seen[form] = label
    if not seen:
        raise ValueError(f"secret {name} has no form of {MIN_FORM} bytes or more")
    return Secret(name, tuple((label, form) for form, label in seen.items()))


def of_text(name: str, text: str) -> Secret:
    raw = text.encode()
    return _secret(name, [("text", raw), *_encodings(raw)])


def of_key(name: str, raw: bytes) -> Secret:
    return _secret(name, [("raw", raw), *_encodings(raw)])


def pem_blocks(blob: bytes) -> list[tuple[str, list[bytes]]]:
    """(kind, body lines) of every PEM private key in ``blob``."""
    return [(m.group(1).decode(), [ln.strip() for ln in m.group(2).splitlines() if ln.strip()])
            for m in _PEM.finditer(blob)]


def pem_keys(root: Path) -> list[Secret]:
    """Every PEM private key in the files under ``root``: each body line, its DER raw and hex."""
    out: list[Secret] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        try:
            blob = path.read_bytes()
        except OSError:
            continue
        for i, (kind, lines) in enumerate(pem_blocks(blob)):
            der = base64.b64decode(b"".join(lines))
            forms = [("pem-line", ln) for ln in lines] + [("der", der), ("der-hex", der.hex().encode())]
            out.append(_secret(f"{kind} {path.relative_to(root)}#{i}", forms))
    return out


def scan_bytes(blob: bytes, where: str, secrets: Iterable[Secret]) -> list[Hit]:
    hits = []
    for secret in secrets:
        for label, form in secret.forms:
            at = blob.find(form)
            if at >= 0:
                hits.append(Hit(secret.name, label, where, at))
    return hits


def scan_text(text: str, where: str, secrets: Iterable[Secret]) -> list[Hit]:
    return scan_bytes(text.encode(errors="surrogateescape"), where, secrets)


def scan_files(paths: Iterable[Path], secrets: Iterable[Secret]) -> list[Hit]:
    """Every file's raw bytes (a missing one is skipped: a WAL file may come and go)."""
    wanted = list(secrets)
    hits: list[Hit] = []
    for path in paths:
        try:
            blob = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            continue
        hits += scan_bytes(blob, str(path), wanted)
    return hits


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
