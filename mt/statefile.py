"""The small JSON state files the MT reads at start (a disk's retention floor ``floor.json``, a failover
view's ``meta.json``, the finished jobs ``jobs_done.json``): read and checked field by field.

Rules:
- a damaged file (unreadable, truncated or not JSON, not an object, a field missing or of the wrong
  type, a format field that is no version) raises :class:`common.errors.StateError` naming the
  file, what is wrong and what the operator can do (``remedy``, given by the caller);
- a file written by a newer drlab is not damaged: :func:`common.formats.of_doc` refuses it with
  ``FormatTooNew`` as before;
- the file is never changed, moved or deleted here: whether the state can be rebuilt is for the
  operator, as the remedy says. The error is logged once, by whoever stops on it (the daemon's
  ``mt_failed`` at start, ``view_reopen_failed`` for a view).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import errors, formats

# what the operator can do about each damaged file (the file itself is kept as it is)
FLOOR_REMEDY = ("It records which journal segments retention pruned and the oldest recovery point kept from "
                "them: restore it from a backup of the MT's data directory, then start the MT again (the "
                "journal and the replica are left as they are)")
VIEW_REMEDY = ("The replica is not affected, but this failover view cannot be reopened: restore the file from "
               "a backup, or drop the view by removing its directory %s (what was written to the view is "
               "lost) and fail over again")
JOBS_REMEDY = ("It records the CS jobs this MT finished and the results the CS has not yet acknowledged: "
               "restore it from a backup; or move it aside to start without it (jobs the CS still lists "
               "then run again)")


@dataclass(frozen=True)
class StateFile:
    path: Path
    kind: str  # what it is, e.g. "retention floor"
    remedy: str  # what the operator can do, one or two sentences

    def damaged(self, what: str) -> errors.StateError:
        return errors.StateError(f"{self.kind} {self.path} is damaged: {what}. {self.remedy}")

    def read(self, supported: int) -> dict[str, Any]:
        """The JSON object in the file, its ``format`` checked (none is 1; newer: FormatTooNew)."""
        return self.check(self.load(), supported)

    def load(self) -> Any:
        """The file's JSON value, whatever it is."""
        try:
            return json.loads(self.path.read_bytes())
        except OSError as exc:
            raise self.damaged(f"it cannot be read ({exc.strerror or exc})") from exc
        except ValueError as exc:  # also UnicodeDecodeError
            raise self.damaged(f"it is not JSON, or truncated ({exc})") from exc

    def check(self, doc: Any, supported: int) -> dict[str, Any]:
        """``doc`` if it is a JSON object of a format this drlab reads."""
        if not isinstance(doc, dict):
            raise self.damaged(f"it holds a JSON {_JSON_TYPES.get(type(doc), 'value')}, not an object")
        version = doc.get(formats.FORMAT_KEY, 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise self.damaged(f"its format {version!r} is not a format version")
        formats.of_doc(f"{self.kind} {self.path}", doc, supported)
        return doc

    def integer(self, doc: dict[str, Any], name: str, minimum: int = 0) -> int:
        value = doc.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.damaged(f"{name} is {_show(value)}, not an integer >= {minimum}")
        return value

    def key(self, doc: dict[str, Any], name: str) -> tuple[int, int] | None:
        """An optional (generation, seq) stored as a list of two integers, or null."""
        value = doc.get(name)
        if value is None:
            return None
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
            raise self.damaged(f"{name} is {_show(value)}, not null or [generation, seq]")
        return int(value[0]), int(value[1])

    def text(self, doc: dict[str, Any], name: str) -> str:
        value = doc.get(name)
        if not isinstance(value, str):
            raise self.damaged(f"{name} is {_show(value)}, not a string")
        return value


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _show(value: Any) -> str:
    return "missing" if value is None else repr(value)[:60]
