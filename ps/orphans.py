"""Orphaned cache files: the shell around ps/release.py's rule.

A PS killed and restarted may still cache batches of disks it no longer serves (switched or
balanced away, purged or regenerated while it was down). After each settings document the PS
applies, every cached disk that is neither served nor drained is checked:

- its MT is the one this PS last uploaded it to, remembered in ``{data_dir}/cache_peers.json``
  (``{disk_id: {mt_url, generation}}``, no keys: rewritten atomically when the served disks
  change; an entry goes once its disk is neither served nor cached);
- the probe is a PUT of the oldest cached batch's URL with an EMPTY body: the MT refuses a disk
  it does not hold (404), a fenced caller (403) or an old generation (409) before reading any
  body, and anything it would otherwise check fails on the empty body (400) — nothing is ever
  staged by a probe;
- ps/release.py decides; a release deletes the disk's files, is logged once (``cache_released``:
  disk, batches, bytes, reason) and counted (:attr:`OrphanReleaser.released`). A kept disk is
  logged (``cache_release_kept``) when its reason changes and probed again after the next
  settings document. A disk without cached batches is forgotten silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import errors, tls
from common import logging as dlog
from ps import release
from ps.cache import BatchCache
from ps.state import Registry
from ps.uploader import OCTET, Clients

log = dlog.get("drlab.ps.orphans")

PEERS_FILE = "cache_peers.json"
PROBE_TIMEOUT_S = 5.0


class PeerBook:
    """Last known MT of each disk this PS served, persisted so a restart still knows it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.peers: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        """Read the file (blocking); a missing or damaged file is an empty book (logged)."""
        try:
            doc = json.loads(self.path.read_text())
            self.peers = {str(k): dict(v) for k, v in doc.items() if isinstance(v, dict)}
        except FileNotFoundError:
            self.peers = {}
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("cache_peers_unreadable", path=str(self.path), error=type(exc).__name__)
            self.peers = {}

    def update(self, registry: Registry, cached: list[str]) -> bool:
        """Remember the MT of every served disk; forget disks neither served nor cached. True if
        the book changed (the caller saves it)."""
        new = {d: p for d, p in self.peers.items() if d in cached}
        for disk in registry.disks.values():
            if disk.mt_url:
                new[disk.disk_id] = {"mt_url": disk.mt_url, "generation": disk.generation}
        changed = new != self.peers
        self.peers = new
        return changed

    def save(self) -> None:
        """Write atomically (common/tls.py durable_write: tmp, fsync, rename, directory fsync; blocking)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tls.durable_write(self.path, json.dumps(self.peers, sort_keys=True).encode())


class OrphanReleaser:
    def __init__(self, registry: Registry, cache: BatchCache, clients: Clients, peers: PeerBook) -> None:
        self._registry = registry
        self._cache = cache
        self._clients = clients
        self.peers = peers
        self.released = {"disks": 0, "batches": 0, "bytes": 0}
        self._kept: dict[str, str] = {}  # disk -> last reason logged

    async def check(self, *, settings_applied: bool) -> None:
        """Apply the rule to every cached disk (called after each settings document)."""
        for disk_id in self._cache.disks():
            pending = self._cache.pending(disk_id)
            if not pending:
                if settings_applied and disk_id not in self._registry.listed:
                    await self._cache.purge(disk_id)  # an empty directory: nothing to lose
                continue
            decision = self._decide(disk_id, settings_applied, None)
            if decision.reason == release.UNCONFIRMED:
                refusal = await self._probe(disk_id, pending[0].gen, pending[0].seq)
                decision = self._decide(disk_id, settings_applied, refusal)  # the settings may have moved meanwhile
            await self._apply(disk_id, decision)

    def _decide(self, disk_id: str, settings_applied: bool, refusal: release.Refusal | None) -> release.Decision:
        """ps/release.py's rule on the settings and cache as they are now (a listed entry this PS
        could not parse counts as served)."""
        disks = self._registry.disks
        pending = self._cache.pending(disk_id)
        unparsed = self._registry.listed - set(disks)
        return release.decide(disk_id, settings_applied=settings_applied,
                              served={d for d, s in disks.items() if not s.draining} | unparsed,
                              drained={d for d, s in disks.items() if s.draining},
                              newest_cached_gen=max((e.gen for e in pending), default=0), refusal=refusal)

    async def _probe(self, disk_id: str, gen: int, seq: int) -> release.Refusal | None:
        """PUT the batch URL with an empty body at the disk's last known MT; the refusal, if any."""
        peer = self.peers.peers.get(disk_id)
        if not peer or not peer.get("mt_url"):
            return None
        try:
            await self._clients.get(str(peer["mt_url"])).request(
                "PUT", f"/v1/disks/{disk_id}/batches/{gen}/{seq}", data=b"", headers=OCTET, timeout_s=PROBE_TIMEOUT_S)
        except errors.DrlabError as exc:
            kind = release.refusal_kind(exc.status, exc.code, exc.message)
            return release.Refusal(kind, gen) if kind else None
        return None  # cannot happen (an empty body is no batch): keep

    async def _apply(self, disk_id: str, decision: release.Decision) -> None:
        if not decision.release:
            if decision.reason not in (release.SERVED, release.DRAINING) and self._kept.get(disk_id) != decision.reason:
                log.info("cache_release_kept", disk=disk_id, reason=decision.reason,
                         batches=self._cache.backlog(disk_id)[0])
            self._kept[disk_id] = decision.reason
            return
        batches, nbytes = self._cache.backlog(disk_id)
        await self._cache.purge(disk_id)
        self._registry.progress.pop(disk_id, None)
        self._kept.pop(disk_id, None)
        self.released["disks"] += 1
        self.released["batches"] += batches
        self.released["bytes"] += nbytes
        log.warning("cache_released", disk=disk_id, batches=batches, bytes=nbytes, reason=decision.reason)
