"""AgentService: the mobility agent's lifecycle and its dealings with the CS.

start(): open the disk images, load the sequence state (and mark it unclean until a clean
stop), register, report the disks, give every disk that was replicating at an unclean stop a
new generation, serve the block socket, then follow the settings document. stop(): stop the
block socket, stop copying, drain what is pending to the PS (bounded), persist the state.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agent.actlog import FILE_NAME as ACTLOG_FILE
from agent.actlog import PINNED, ActivityLog
from agent.blockserver import BlockServer
from agent.bookmarks import BookmarkAgent
from agent.disk import DiskImage
from agent.nbd import NbdServer
from agent.pipeline import Pipeline
from agent.progress import ProgressReporter
from agent.replication import Replicator
from agent.resizewatch import ResizeWatch, adopt
from agent.shutdown import Shutdown
from agent.state import AgentState, DiskState, StateStore
from common import errors, tls
from common import logging as dlog
from common.component import ControlPlane, ensure_identity
from common.config import AgentConfig
from common.hoststats import RateMeter
from common.http import retrying

log = dlog.get("drlab.agent.service")

DRAIN_TIMEOUT_S = 10.0


class AgentService:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.disks: list[DiskImage] = []
        self.store = StateStore(cfg.data_dir)
        self.state = AgentState()
        self.was_clean = True
        self.files: tls.IdentityFiles | None = None
        self.control: ControlPlane | None = None
        self.replicator: Replicator | None = None
        self.blockserver: BlockServer | None = None
        self.nbd: NbdServer | None = None  # the NBD export on loopback, when cfg.nbd_enabled
        self.progress: ProgressReporter | None = None
        self.bookmarks: BookmarkAgent | None = None  # crash / app-consistent tags, group bookmarks
        self.shutdown: Shutdown | None = None  # planned failover: the machine stops taking writes
        self._settings_lock = asyncio.Lock()
        self.actlog: ActivityLog | None = None
        self._ps_lost_task: asyncio.Task[None] | None = None
        self._settings_applied = asyncio.Event()
        self._churn = RateMeter()  # client bytes written per second, between two heartbeats
        self.resize: ResizeWatch | None = None  # a disk file resized: reported to the CS (agent/resizewatch.py)

    @property
    def machine_id(self) -> str:
        if self.control is None:
            raise RuntimeError("the agent is not started")
        return self.control.component_id

    async def start(self) -> None:
        self.disks = [DiskImage(d.path, d.size_bytes, d.name) for d in self.cfg.disks]
        self.state = self.store.load()
        self.was_clean = self.state.clean_shutdown
        self.state.clean_shutdown = False
        self.store.save(self.state)
        self.files = await retrying(lambda: ensure_identity(self.cfg, "agent", {}), what="register",
                                    max_backoff_s=self.cfg.retry_max_backoff_s)
        self.control = ControlPlane(self.cfg, self.files, on_settings=self._on_settings, metrics=self.metrics)
        log.info("agent_starting", machine_id=self.control.component_id, disks=len(self.disks),
                 clean_shutdown=self.was_clean)
        await self._report_disks()
        hot = self._open_actlog()
        if not self.was_clean:
            await self._regenerate_unclean(hot)
        self._restore_hot(hot)
        self.replicator = Replicator(self.cfg, self.disks, tls.client_context(self.files), actlog=self.actlog,
                                     on_ps_lost=self._ps_lost, on_protected=self._protected)
        self.replicator.tracker.last_wnum = self.state.last_wnum  # write numbers keep increasing
        self.replicator.protected = {i for i, d in enumerate(self.disks)
                                     if (st := self.state.disks.get(d.name)) is not None and st.protected}
        self.replicator.start()
        self.progress = ProgressReporter(self.control.cs, self.replicator, timeout_s=self.cfg.request_timeout_s)
        self.progress.start()
        self.control.start()
        cs = self.control.cs
        self.resize = ResizeWatch(self.disks, lambda body: cs.put("/v1/machines/self/disks", body),
                                  self.cfg.heartbeat_interval_s)
        self.resize.start()
        # serve writes only once the settings have reopened the pipelines: a write before that
        # would reach the disk untracked
        await self._settings_applied.wait()
        self.blockserver = BlockServer(self.cfg.socket_path, self.disks, self.replicator.write)
        await self.blockserver.start()
        if self.cfg.nbd_enabled:
            self.nbd = NbdServer.from_config(self.cfg, self.disks, self.replicator.write_next)
            await self.nbd.start()

    async def stop(self) -> None:
        if self.bookmarks is not None:  # first: a freeze in progress is released
            await self.bookmarks.stop()
        if self.shutdown is not None:
            await self.shutdown.stop()
        if self.nbd is not None:
            await self.nbd.stop()
        if self.blockserver is not None:
            await self.blockserver.stop()
        if self.progress is not None:
            await self.progress.stop()
        if self.resize is not None:
            await self.resize.stop()
        if self.control is not None:
            await self.control.stop()
        drained = False
        if self.replicator is not None:
            await self.replicator.stop_resyncs()
            drained = await self.replicator.drain(DRAIN_TIMEOUT_S)
            self._remember_pipelines()
            self.state.last_wnum = self.replicator.tracker.last_wnum
            await self.replicator.stop()
        self.state.clean_shutdown = drained or not any(d.protected for d in self.state.disks.values())
        self.store.save(self.state)
        if self.actlog is not None:
            self.actlog.flush_sync()
            self.actlog.close()
        for disk in self.disks:
            disk.close()
        log.info("agent_stopped", clean_shutdown=self.state.clean_shutdown)

    # ------------------------------------------------------------ status

    def disk_status(self, name: str) -> dict[str, Any]:
        pipe = self._pipeline(name)
        if pipe is not None:
            return pipe.status()
        st = self.state.disks.get(name) or DiskState(disk_id="", name=name)
        return {"state": "unprotected", "percent": 0.0, "generation": st.generation, "disk_id": st.disk_id,
                "next_seq": st.next_seq, "acked_seq": st.next_seq - 1, "ps_durable": 0, "mt_received": 0,
                "mt_applied": 0, "resync_done_seq": st.resync_done_seq, "unacked_bytes": 0, "send_failures": 0,
                "bytes_done": 0, "bytes_total": 0}

    def metrics(self) -> dict[str, Any]:
        backlog = self.replicator.backlog if self.replicator else None
        disks = {d.name: {**self.disk_status(d.name), **self._health(d)} for d in self.disks}
        return {"disks": disks,
                "backlog_bytes": backlog.bytes if backlog else 0, "backlog_waits": backlog.waits if backlog else 0,
                "time_ns": time.time_ns(),
                "churn_bytes_per_s": round(sum(d["churn_bytes_per_s"] for d in disks.values()), 1)}

    def _health(self, disk: DiskImage) -> dict[str, Any]:
        """What the CS's health rules read (cs/health/rules.py): churn, and how long sends to the PS have
        failed in a row — unreachable (no connection) or refused (any other error but a throttle)."""
        pipe = self._pipeline(disk.name)
        up = pipe.uploader if pipe is not None else None
        failing = (time.time_ns() - up.failing_since_ns) / 1e9 if up and up.failing_since_ns else 0.0
        error = up.last_error if up and failing else ""
        return {"churn_bytes_per_s": round(self._churn.rate(disk.name, disk.bytes_written), 1),
                "ps_unreachable_s": round(failing, 3) if error == "transport" else 0.0,
                "upload_failing_s": round(failing, 3) if error not in ("", "transport", "throttled") else 0.0,
                "last_error": error}

    def _pipeline(self, name: str) -> Pipeline | None:
        if self.replicator is None:
            return None
        return next((p for p in self.replicator.pipelines.values() if p.name == name), None)

    # ------------------------------------------------------------ CS calls

    async def _report_disks(self) -> None:
        assert self.control is not None
        body = {"disks": [{"name": d.name, "size_bytes": d.size_bytes} for d in self.disks]}
        cs = self.control.cs
        reply = await retrying(lambda: cs.put("/v1/machines/self/disks", body), what="report-disks",
                               max_backoff_s=self.cfg.retry_max_backoff_s)
        for item in reply["disks"]:
            name, disk_id = str(item["name"]), str(item["disk_id"])
            known = self.state.disks.get(name)
            if known is None or known.disk_id != disk_id:
                self.state.disks[name] = DiskState(disk_id=disk_id, name=name)
        self.store.save(self.state)

    def _open_actlog(self) -> dict[int, list[tuple[int, int]]] | None:
        """Open the activity log; the hot extents it held per disk index (None: unreadable)."""
        sizes = [(i, d.size_bytes) for i, d in enumerate(self.disks)]
        self.actlog = ActivityLog(self.cfg.data_dir / ACTLOG_FILE, sizes, self.cfg.actlog_extent_bytes,
                                  self.cfg.actlog_linger_s)
        return self.actlog.open()

    async def _regenerate_unclean(self, hot: dict[int, list[tuple[int, int]]] | None) -> None:
        """Batches of an unclean stop may be lost: replicate such disks again, under a new
        generation — only the activity log's hot extents when the disk was past its initial
        copy and the log is readable, else the whole disk."""
        for index, disk in enumerate(self.disks):
            st = self.state.disks.get(disk.name)
            if st is None or not st.protected:
                continue
            partial = hot is not None and (st.resync_done_seq > 0 or st.copy_partial)
            try:
                gen = await self._request_resync(st, "unclean-shutdown")
            except errors.Conflict as exc:  # e.g. resized: only disable + enable helps (cs/resize.py)
                log.warning("unclean_restart_resync_refused", disk=st.disk_id, error=exc.message)
                continue
            self.state.disks[st.name] = DiskState(disk_id=st.disk_id, name=st.name, generation=gen,
                                                  next_resync_partial=partial)
            log.info("unclean_restart_resync", disk=st.disk_id, name=st.name, gen=gen, partial=partial,
                     hot_bytes=sum(n for _, n in (hot or {}).get(index, [])) if partial else disk.size_bytes)
        self.store.save(self.state)

    def _restore_hot(self, hot: dict[int, list[tuple[int, int]]] | None) -> None:
        """Carry the previous run's hot extents over: pinned until a resync completes, or (a
        clean restart in the same generation) until the MT applied what was sent before."""
        assert self.actlog is not None
        for index, disk in enumerate(self.disks):
            st = self.state.disks.get(disk.name)
            extents = (hot or {}).get(index, [])
            if st is None or not st.protected or not extents:
                continue
            clean_same_gen = self.was_clean and st.resync_done_seq > 0
            self.actlog.restore(index, extents, seq=st.next_seq - 1 if clean_same_gen else PINNED)

    def _protected(self, index: int) -> None:
        """The MT applied the copy: from now on a crash needs only the hot extents resynced."""
        assert self.replicator is not None
        pipe = self.replicator.pipelines.get(index)
        if pipe is not None:
            self._remember(pipe)
            self.store.save(self.state)

    def _ps_lost(self, index: int) -> None:
        """The PS lost batches it had acknowledged: re-send the un-applied regions (the hot
        extents) under a new generation."""
        if self._ps_lost_task is not None and not self._ps_lost_task.done():
            return
        self._ps_lost_task = asyncio.create_task(self._resync_partial(index, "ps-lost"), name="ps-lost-resync")

    async def _resync_partial(self, index: int, reason: str) -> None:
        st = self.state.disks.get(self.disks[index].name)
        if st is None or not st.protected:
            return
        st.next_resync_partial = True
        self.store.save(self.state)
        try:
            await self._request_resync(st, reason)
        except errors.DrlabError as exc:
            log.error("resync_request_failed", disk=st.disk_id, reason=reason, error=exc.message)

    async def _request_resync(self, st: DiskState, reason: str) -> int:
        assert self.control is not None
        cs, path = self.control.cs, f"/v1/disks/{st.disk_id}/resync"
        reply = await retrying(lambda: cs.post(path, {"reason": reason}), what="request-resync",
                               max_backoff_s=self.cfg.retry_max_backoff_s)
        gen = int(reply["generation"])
        log.info("new_generation", disk=st.disk_id, name=st.name, old_gen=st.generation, gen=gen, reason=reason)
        return gen

    # ------------------------------------------------------------ settings

    async def _on_settings(self, document: dict[str, Any]) -> None:
        wanted = {str(d["name"]): d for d in document.get("disks", [])}
        async with self._settings_lock:
            for index, disk in enumerate(self.disks):
                try:
                    await self._apply_disk(index, disk.name, wanted.get(disk.name))
                except (errors.DrlabError, KeyError, ValueError) as exc:
                    log.error("settings_apply_failed", name=disk.name, error=str(exc))
            self.store.save(self.state)
        self._settings_applied.set()
        if self.progress is not None:
            self.progress.wake()
        if self.bookmarks is None and self.replicator is not None and self.control is not None:
            cs = self.control.cs
            self.bookmarks = BookmarkAgent(self.cfg, self.replicator,
                                           lambda bid, body: cs.post(f"/v1/bookmarks/{bid}/report", body))
            self.bookmarks.start()
        if self.bookmarks is not None:
            self.bookmarks.on_settings(document)  # bookmark requests of the CS (agent/bookmarks.py)
        if self.shutdown is None and self.replicator is not None and self.control is not None:
            cs = self.control.cs
            self.shutdown = Shutdown(self.replicator, lambda body: cs.post("/v1/machines/self/shutdown", body))
        if self.shutdown is not None:
            self.shutdown.on_settings(document)  # a planned failover stops the machine (agent/shutdown.py)

    async def _apply_disk(self, index: int, name: str, entry: dict[str, Any] | None) -> None:
        assert self.replicator is not None
        pipe = self.replicator.pipelines.get(index)
        st = self.state.disks.get(name)
        if st is None:
            return
        if entry is None:
            if pipe is not None or st.protected:
                await self.replicator.unprotect(index)
                self.state.disks[name] = DiskState(disk_id=st.disk_id, name=name)
                log.info("protection_removed", disk=st.disk_id, name=name)
            return
        gen, ps_url = int(entry["generation"]), str(entry["ps_url"])
        if str(entry.get("disk_id", st.disk_id)) != st.disk_id:
            raise ValueError(f"settings name disk {name} {entry.get('disk_id')}, the CS told us {st.disk_id}")
        if pipe is not None and gen == pipe.generation and ps_url != pipe.ps_url:
            await self.replicator.switch_ps(index, ps_url)  # a PS switch, old PS alive: same stream
            return
        if gen < st.generation or (pipe is not None and gen <= pipe.generation):
            return  # the settings lag behind a generation we already run (or asked for)
        if pipe is not None:
            self._remember(pipe)
            await self.replicator.close(index)
        if adopt(self.disks[index], int(entry.get("size_bytes", 0))) and self.actlog is not None:
            self.actlog.sizes[index] = self.disks[index].size_bytes  # protected again at the new size
            self.actlog.forget(index)
        if entry.get("resync_scope") == "hot" and gen > st.generation and (st.resync_done_seq or st.copy_partial):
            st.next_resync_partial = True  # e.g. a PS switch with the old PS dead: the hot extents only
        self._open(index, st, gen, ps_url, str(entry.get("resync_reason") or "ps-lost"),
                   seeded=entry.get("seeded") is True)

    def _open(self, index: int, st: DiskState, gen: int, ps_url: str, new_reason: str = "ps-lost",
              seeded: bool = False) -> None:
        """``seeded``: the MT adopted an existing disk as the replica (cs/targets.py): a new
        generation compares block hashes even when it is the first."""
        assert self.replicator is not None
        if st.generation == gen and st.resync_done_seq:  # clean restart in data mode
            self.replicator.open(index, disk_id=st.disk_id, generation=gen, ps_url=ps_url, next_seq=st.next_seq,
                                 resync_from=None, resync_done_seq=st.resync_done_seq)
        elif st.generation == gen and st.next_seq > 1 and st.copy_partial and self.actlog is not None:
            # clean restart in the middle of a region copy: copy the (still pinned) hot extents again
            self.replicator.open(index, disk_id=st.disk_id, generation=gen, ps_url=ps_url, next_seq=st.next_seq,
                                 resync_from=0, resync_extents=self.actlog.extents(index), reason="restart")
        elif st.generation == gen and st.next_seq > 1:  # clean restart in the middle of a copy
            self.replicator.open(index, disk_id=st.disk_id, generation=gen, ps_url=ps_url, next_seq=st.next_seq,
                                 resync_from=st.resync_offset, skip_zero=st.resync_skip_zero,
                                 reason="initial" if gen == 1 else "resync")
        elif st.next_resync_partial and self.actlog is not None:  # a new generation: the hot extents only
            extents = self.actlog.extents(index)
            reason = "unclean-shutdown" if st.generation == gen else new_reason
            st = DiskState(disk_id=st.disk_id, name=st.name, generation=gen, copy_partial=True)
            self.state.disks[st.name] = st
            self.replicator.open(index, disk_id=st.disk_id, generation=gen, ps_url=ps_url,
                                 resync_from=0, resync_extents=extents, reason=reason)
        else:  # a new generation: the whole disk (copied onto an empty replica, else compared by hashes)
            st = DiskState(disk_id=st.disk_id, name=st.name, generation=gen, resync_skip_zero=gen == 1 and not seeded)
            self.state.disks[st.name] = st
            self.replicator.open(index, disk_id=st.disk_id, generation=gen, ps_url=ps_url,
                                 resync_from=0, skip_zero=st.resync_skip_zero,
                                 reason=("seeded" if seeded else "initial") if gen == 1 else "resync")

    def _remember_pipelines(self) -> None:
        assert self.replicator is not None
        for pipe in self.replicator.pipelines.values():
            self._remember(pipe)

    def _remember(self, pipe: Pipeline) -> None:
        st = self.state.disks[pipe.name]
        st.generation, st.next_seq = pipe.generation, pipe.stream.next_seq
        st.resync_done_seq = pipe.stream.resync_done_seq
        st.resync_offset = pipe.resync.bytes_done if pipe.resync else 0
