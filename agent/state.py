"""Persisted sequence state of the agent: ``data_dir/state.json``, written durably.

Rules:
- on start the service reads the file, remembers whether the last stop was clean, then at once
  writes ``clean_shutdown = false``: a kill -9 from then on is seen as unclean by the next start;
- a disk replicated under a generation that was not shut down cleanly gets a new generation
  (and a new initial replication, seq from 1): its batches in flight may be lost;
- a clean stop drains what it can, writes every disk's ``next_seq`` and ``clean_shutdown = true``
  only when every pipeline was drained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import errors, formats
from common.tls import durable_write

FILE_NAME = "state.json"
VERSION = 1


@dataclass
class DiskState:
    disk_id: str
    name: str
    generation: int = 0  # 0: not protected yet
    next_seq: int = 1
    resync_done_seq: int = 0  # seq of the RESYNC_DONE batch of this generation, 0 while resyncing
    resync_offset: int = 0  # where a copy interrupted by a clean stop resumes
    resync_skip_zero: bool = False  # the copy may skip zeros (the replica started zero-filled)
    next_resync_partial: bool = False  # the next generation copies the activity log's hot extents only
    copy_partial: bool = False  # this generation's copy covers the hot extents only

    @property
    def protected(self) -> bool:
        return self.generation > 0


@dataclass
class AgentState:
    clean_shutdown: bool = True
    last_wnum: int = 0  # the machine's last write number at the last clean stop
    disks: dict[str, DiskState] = field(default_factory=dict)  # by disk name

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "clean_shutdown": self.clean_shutdown, "last_wnum": self.last_wnum,
                "disks": [asdict(d) for d in self.disks.values()]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AgentState:
        formats.of_doc("agent state (state.json)", doc, VERSION, key="version")  # missing: 1, newer: refused
        disks = {}
        for item in doc.get("disks", []):
            disk = DiskState(disk_id=str(item["disk_id"]), name=str(item["name"]),
                             generation=int(item["generation"]), next_seq=int(item["next_seq"]),
                             resync_done_seq=int(item["resync_done_seq"]),
                             resync_offset=int(item.get("resync_offset", 0)),
                             resync_skip_zero=bool(item.get("resync_skip_zero", False)),
                             next_resync_partial=bool(item.get("next_resync_partial", False)),
                             copy_partial=bool(item.get("copy_partial", False)))
            disks[disk.name] = disk
        return cls(clean_shutdown=bool(doc.get("clean_shutdown", False)), last_wnum=int(doc.get("last_wnum", 0)),
                   disks=disks)


class StateStore:
    """The agent's state file. :meth:`save` writes (durably: two fsyncs) only when the state differs
    from what this store last read or wrote, so the settings documents that change nothing for
    this machine cost no disk write."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._saved: bytes | None = None  # the file's bytes as this store last read or wrote them
        self.writes = 0

    def load(self) -> AgentState:
        """The saved state; a fresh (clean, empty) one when there is none yet."""
        if not self.path.exists():
            return AgentState()
        raw = self.path.read_bytes()
        try:
            doc = json.loads(raw)
        except ValueError as exc:  # never guessed: the generations in it decide what is still valid
            raise errors.ConfigError(f"{self.path} is damaged ({exc}); move it away to start afresh (every "
                                     "protected disk then gets a new generation and a full resync)") from exc
        self._saved = raw
        return AgentState.from_json(doc)

    def save(self, state: AgentState) -> None:
        data = json.dumps(state.to_json(), indent=2).encode()
        if data == self._saved:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        durable_write(self.path, data)
        self._saved = data
        self.writes += 1
