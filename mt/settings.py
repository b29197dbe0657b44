"""What the MT's settings document says (pure: no I/O): its disks, their keys, its jobs."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from common import errors
from common import logging as dlog

log = dlog.get("drlab.mt.settings")


def _action(value: Any) -> str:
    """A disk's low-space action (mt/retention.py): absent or unknown (a newer CS) is "prune" —
    replication of the disk goes on."""
    if value in (None, "prune", "pause"):
        return str(value or "prune")
    log.warning("settings_low_space_action_unknown", value=str(value)[:32])
    return "prune"


@dataclass(frozen=True)
class DiskSettings:
    disk_id: str
    ps_id: str
    generation: int
    size_bytes: int
    key_epoch: int
    key: bytes = field(repr=False)
    # PSs the disk moved away from that still upload what they cached (a PS switch's drain)
    drain_ps_ids: tuple[str, ...] = ()
    # retention (mt/retention.py) from the machine's policy: 0 keeps every point while space lasts
    retention_window_s: int = 0
    low_space_action: str = "prune"
    replica_path: str | None = None  # an existing disk to adopt as the replica (a seed, mt/seed.py)

    def sent_by(self, ps_id: str) -> bool:
        """Whether ``ps_id`` may send this disk's batches: its PS, or one still draining it."""
        return bool(ps_id) and (ps_id == self.ps_id or ps_id in self.drain_ps_ids)

    @classmethod
    def from_doc(cls, item: dict[str, Any]) -> DiskSettings:
        try:
            disk_id = str(item["disk_id"])
            if len(bytes.fromhex(disk_id)) != 16:
                raise ValueError("disk id")
            return cls(disk_id=disk_id, ps_id=str(item.get("ps_id") or ""), generation=int(item["generation"]),
                       size_bytes=int(item["size_bytes"]), key_epoch=int(item["key_epoch"]),
                       key=base64.b64decode(str(item["key_b64"]), validate=True),
                       drain_ps_ids=tuple(str(p) for p in item.get("drain_ps_ids") or ()),
                       replica_path=str(item["replica_path"]) if item.get("replica_path") else None,
                       retention_window_s=max(0, int(item.get("retention_window_s") or 0)),
                       low_space_action=_action(item.get("low_space_action")))
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise errors.BadRequest(f"bad disk entry in settings: {type(exc).__name__}") from exc


@dataclass(frozen=True)
class Job:
    job_id: str
    kind: str
    disk_id: str
    point: Any
    image: bool = False  # a failover (or view-change) also writes the view's image file (``"image": true``)

    @classmethod
    def from_doc(cls, item: dict[str, Any]) -> Job:
        try:
            job_id = str(item["job_id"])
            if not job_id or not all(c.isalnum() or c in "-_" for c in job_id) or len(job_id) > 64:
                raise ValueError("job id")
            image = item.get("image", False)
            if not isinstance(image, bool):
                raise ValueError("image")
            return cls(job_id, str(item.get("kind", "failover")), str(item["disk_id"]), item.get("point", "latest"),
                       image)
        except (KeyError, TypeError, ValueError) as exc:
            raise errors.BadRequest(f"bad job entry in settings: {type(exc).__name__}") from exc


class Registry:
    """Disks this MT holds (from settings), every key epoch seen for them, and queued jobs."""

    def __init__(self) -> None:
        self.disks: dict[str, DiskSettings] = {}
        self.jobs: list[Job] = []
        self.revoked: frozenset[int] = frozenset()
        self._keys: dict[str, dict[int, bytes]] = {}
        self.loaded = False  # a settings document applied: until then no disk is known to be held or not

    def __repr__(self) -> str:
        return f"Registry(disks={sorted(self.disks)}, jobs={len(self.jobs)})"

    def parse(self, document: dict[str, Any]) -> dict[str, DiskSettings]:
        new: dict[str, DiskSettings] = {}
        for item in document.get("disks", []) or []:
            try:
                disk = DiskSettings.from_doc(item)
            except errors.BadRequest as exc:
                log.error("settings_disk_ignored", error=exc.message)
                continue
            new[disk.disk_id] = disk
        return new

    def apply(self, disks: dict[str, DiskSettings], document: dict[str, Any]) -> None:
        self.disks = disks
        self.loaded = True
        for disk in disks.values():
            self._keys.setdefault(disk.disk_id, {})[disk.key_epoch] = disk.key
        jobs = []
        for item in document.get("jobs", []) or []:
            try:
                jobs.append(Job.from_doc(item))
            except errors.BadRequest as exc:
                log.error("settings_job_ignored", error=exc.message)
        self.jobs = jobs
        self.revoked = frozenset(int(s) for s in document.get("revoked_serials", []) or [])

    def key_for(self, disk_id: str, epoch: int) -> bytes:
        """The disk key of ``epoch``: Unavailable (retriable) for an epoch newer than any seen yet
        (the settings will bring it), LookupError for an older one this MT never had."""
        keys = self._keys.get(disk_id, {})
        if epoch in keys:
            return keys[epoch]
        if not keys or epoch > max(keys):
            raise errors.Unavailable(f"key epoch {epoch} of disk {disk_id} is not known yet")
        raise LookupError(epoch)

    def is_revoked(self, serial: int) -> bool:
        return serial in self.revoked
