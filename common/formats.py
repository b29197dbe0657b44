"""Versions of the on-disk formats (pure): what each reader accepts (docs/PROTOCOL.md "On-disk
formats and versions" lists every format, its file and its versions).

Rules:
- every file a PS, MT or agent writes carries a format version: binary formats in their header,
  JSON documents in a ``format`` field (``version`` for the agent's state), SQLite databases in
  ``PRAGMA user_version``; a JSON document or database without one is version 1 (the layout
  written before versions were recorded), so files written by earlier releases keep opening;
- a reader opens every version from 1 up to the one it writes, and refuses a newer one with
  :class:`FormatTooNew` (or the caller's error class) naming the file kind, both versions and
  what to do: a file written by a newer drlab is never misread (a downgrade is not supported).
"""

from __future__ import annotations

from typing import Any

from common import __version__

FORMAT_KEY = "format"


class FormatTooNew(ValueError):
    """A file written in a format version newer than this drlab reads."""


def message(kind: str, found: int, supported: int) -> str:
    return (f"{kind} is format version {found}, newer than this drlab {__version__} reads (versions 1 to "
            f"{supported}): it was written by a newer drlab; run that release (downgrades are not supported)")


def check(kind: str, found: int, supported: int, error: type[Exception] = FormatTooNew) -> int:
    """``found`` if this drlab reads it; a version below 1 or above ``supported`` raises ``error``."""
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise error(f"{kind}: {found!r} is not a format version")
    if found > supported:
        raise error(message(kind, found, supported))
    return found


def of_doc(kind: str, doc: Any, supported: int, key: str = FORMAT_KEY,
           error: type[Exception] = FormatTooNew) -> int:
    """The format version of a JSON document (1 when it has none) after :func:`check`."""
    if not isinstance(doc, dict):
        raise error(f"{kind}: not a JSON object")
    return check(kind, doc.get(key, 1), supported, error)
