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

from agent.blockserver import BlockServer
from agent.disk import DiskImage
from agent.progress import ProgressReporter
from agent.replication import Pipeline, Replicator
from agent.state import AgentState, DiskState, StateStore
from common import errors, tls
from common import logging as dlog
from common.component import ControlPlane, ensure_identity
from common.config import AgentConfig
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
        self.progress: ProgressReporter | None = None
        self._settings_lock = asyncio.Lock()

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
        if not self.was_clean:
            await self._regenerate_unclean()
        self.replicator = Replicator(self.cfg, self.disks, tls.client_context(self.files))
        self.replicator.start()
        self.blockserver = BlockServer(self.cfg.socket_path, self.disks, self.replicator.write)
        await self.blockserver.start()
        self.progress = ProgressReporter(self.control.cs, self.replicator, timeout_s=self.cfg.request_timeout_s)
        self.progress.start()
        self.control.start()

    async def stop(self) -> None:
        if self.blockserver is not None:
            await self.blockserver.stop()
        if self.progress is not None:
            await self.progress.stop()
        if self.control is not None:
            await self.control.stop()
        drained = False
        if self.replicator is not None:
            await self.replicator.stop_resyncs()
            drained = await self.replicator.drain(DRAIN_TIMEOUT_S)
            self._remember_pipelines()
            await self.replicator.stop()
        self.state.clean_shutdown = drained or not any(d.protected for d in self.state.disks.values())
        self.store.save(self.state)
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
        return {"disks": {d.name: self.disk_status(d.name) for d in self.disks},
                "backlog_bytes": backlog.bytes if backlog else 0, "backlog_waits": backlog.waits if backlog else 0,
                "time_ns": time.time_ns()}

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

    async def _regenerate_unclean(self) -> None:
        """Batches of an unclean stop may be lost: replicate such disks again, under a new generation."""
        for st in self.state.disks.values():
            if st.protected:
                gen = await self._request_resync(st, "unclean-shutdown")
                self.state.disks[st.name] = DiskState(disk_id=st.disk_id, name=st.name, generation=gen)
        self.store.save(self.state)

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
        if self.progress is not None:
            self.progress.wake()

    async def _apply_disk(self, index: int, name: str, entry: dict[str, Any] | None) -> None:
        assert self.replicator is not None
        pipe = self.replicator.pipelines.get(index)
        st = self.state.disks.get(name)
        if st is None:
            return
        if entry is None:
            if pipe is not None or st.protected:
                await self.replicator.close(index)
                self.state.disks[name] = DiskState(disk_id=st.disk_id, name=name)
                log.info("protection_removed", disk=st.disk_id, name=name)
            return
        gen, ps_url = int(entry["generation"]), str(entry["ps_url"])
        if str(entry.get("disk_id", st.disk_id)) != st.disk_id:
            raise ValueError(f"settings name disk {name} {entry.get('disk_id')}, the CS told us {st.disk_id}")
        if gen < st.generation or (pipe is not None and gen <= pipe.generation):
            return  # the settings lag behind a generation we already run (or asked for)
        if pipe is not None:
            self._remember(pipe)
            await self.replicator.close(index)
        self._open(index, st, gen, ps_url)

    def _open(self, index: int, st: DiskState, gen: int, ps_url: str) -> None:
        assert self.replicator is not None
        if st.generation == gen and st.resync_done_seq:  # clean restart in data mode
            self.replicator.open(index, disk_id=st.disk_id, generation=gen, ps_url=ps_url, next_seq=st.next_seq,
                                 resync_from=None, resync_done_seq=st.resync_done_seq)
        elif st.generation == gen and st.next_seq > 1:  # clean restart in the middle of a copy
            self.replicator.open(index, disk_id=st.disk_id, generation=gen, ps_url=ps_url, next_seq=st.next_seq,
                                 resync_from=st.resync_offset, skip_zero=st.resync_skip_zero)
        else:  # a new generation: copy the whole disk (zeros too, unless the replica starts empty)
            st = DiskState(disk_id=st.disk_id, name=st.name, generation=gen, resync_skip_zero=gen == 1)
            self.state.disks[st.name] = st
            self.replicator.open(index, disk_id=st.disk_id, generation=gen, ps_url=ps_url,
                                 resync_from=0, skip_zero=st.resync_skip_zero)

    def _remember_pipelines(self) -> None:
        assert self.replicator is not None
        for pipe in self.replicator.pipelines.values():
            self._remember(pipe)

    def _remember(self, pipe: Pipeline) -> None:
        st = self.state.disks[pipe.name]
        st.generation, st.next_seq = pipe.generation, pipe.stream.next_seq
        st.resync_done_seq = pipe.stream.resync_done_seq
        st.resync_offset = pipe.resync.bytes_done if pipe.resync else 0
