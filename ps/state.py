"""What the PS knows about the disks it serves (pure: no I/O).

:class:`DiskSettings` comes from the CS's settings document; :class:`DiskProgress` tracks what
this PS has durably cached and what the MT reported as received / applied, per generation.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from common import errors
from common import logging as dlog

log = dlog.get("drlab.ps.state")


@dataclass(frozen=True)
class DiskSettings:
    disk_id: str
    machine_id: str
    generation: int
    size_bytes: int
    mt_url: str
    mt_control_url: str
    key_epoch: int
    key: bytes = field(repr=False)
    # moved to another PS (cs/switch_jobs.py): agents' new batches are refused, what is cached
    # here is still uploaded to the MT until the CS drops the disk from this PS's settings
    draining: bool = False

    @classmethod
    def from_doc(cls, item: dict[str, Any]) -> DiskSettings:
        try:
            disk_id = str(item["disk_id"])
            bytes.fromhex(disk_id)
            key = base64.b64decode(str(item["key_b64"]), validate=True)
            return cls(disk_id=disk_id, machine_id=str(item["machine_id"]), generation=int(item["generation"]),
                       size_bytes=int(item["size_bytes"]), mt_url=str(item.get("mt_url") or ""),
                       mt_control_url=str(item.get("mt_control_url") or ""), key_epoch=int(item["key_epoch"]),
                       key=key, draining=item.get("draining") is True)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise errors.BadRequest(f"bad disk entry in settings: {type(exc).__name__}") from exc

    @property
    def disk_id_bytes(self) -> bytes:
        return bytes.fromhex(self.disk_id)


@dataclass
class DiskProgress:
    """Highest seq durable here and on the MT. ``mt_*`` are contiguous seqs of ``mt_gen``."""

    ps_gen: int = 0
    ps_durable: int = 0
    mt_gen: int = 0
    mt_received: int = 0
    mt_applied: int = 0
    uploaded_bytes: int = 0
    uploaded_batches: int = 0

    def stored(self, gen: int, seq: int) -> None:
        if gen > self.ps_gen:
            self.ps_gen, self.ps_durable = gen, seq
        elif gen == self.ps_gen:
            self.ps_durable = max(self.ps_durable, seq)

    def observe_mt(self, gen: int, received: int, applied: int) -> None:
        if gen > self.mt_gen:
            self.mt_gen, self.mt_received, self.mt_applied = gen, received, applied
        elif gen == self.mt_gen:
            self.mt_received = max(self.mt_received, received)
            self.mt_applied = max(self.mt_applied, applied)

    def mt_of(self, gen: int) -> tuple[int, int]:
        """(mt_received, mt_applied) for ``gen``; zeros if the MT reported another generation."""
        return (self.mt_received, self.mt_applied) if gen == self.mt_gen else (0, 0)

    def unapplied(self, gen: int) -> bool:
        """True while batches of ``gen`` this PS cached are not yet reported applied."""
        received, applied = self.mt_of(gen)
        durable = self.ps_durable if gen == self.ps_gen else 0
        return applied < max(durable, received)


class Registry:
    """Disks this PS serves (from settings) and their progress."""

    def __init__(self) -> None:
        self.disks: dict[str, DiskSettings] = {}
        self.progress: dict[str, DiskProgress] = {}
        self.revoked: frozenset[int] = frozenset()
        # every disk id the document lists, parsed or not (an entry this PS cannot parse keeps its cache)
        self.listed: frozenset[str] = frozenset()

    def apply_document(self, document: dict[str, Any]) -> set[str]:
        """Replace the served disks; returns the ids whose settings changed (added, removed or edited)."""
        new: dict[str, DiskSettings] = {}
        for item in document.get("disks", []):
            try:
                disk = DiskSettings.from_doc(item)
            except errors.BadRequest as exc:
                log.error("settings_disk_ignored", error=exc.message)
                continue
            new[disk.disk_id] = disk
        changed = {d for d in set(new) | set(self.disks) if new.get(d) != self.disks.get(d)}
        self.disks = new
        self.listed = frozenset(str(item.get("disk_id")) for item in document.get("disks", []) or []
                                if isinstance(item, dict)) | frozenset(new)
        self.revoked = frozenset(int(s) for s in document.get("revoked_serials", []))
        return changed

    def progress_of(self, disk_id: str) -> DiskProgress:
        return self.progress.setdefault(disk_id, DiskProgress())

    def generation(self, disk_id: str) -> int:
        """The disk's current generation: the CS's, or a newer one its agent already sent."""
        disk = self.disks.get(disk_id)
        settings_gen = disk.generation if disk else 0
        return max(settings_gen, self.progress_of(disk_id).ps_gen)

    def is_revoked(self, serial: int) -> bool:
        return serial in self.revoked
