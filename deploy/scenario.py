"""Building blocks shared by the demo and the drills: a lab with one protected machine, its
workload as a separate process, and failover checked by the oracle — of its first disk, or of the
whole machine at one write number W (every disk checked at that W)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import errors, oracle, tls
from common.http import ApiClient
from common.wire import writelog
from deploy import report
from deploy.lab import Lab
from deploy.topology import DiskSpec, Node


@dataclass
class PointCheck:
    label: str
    requested: str
    result: dict[str, Any]
    ok: bool
    detail: str
    seconds: float


@dataclass
class MachineCheck:
    """A machine failover: the W it chose and the oracle's verdict on every disk at that W."""

    label: str
    requested: Any
    wnum: int
    result: dict[str, Any]
    ok: bool
    detail: str
    seconds: float
    verdict: oracle.MachineVerifyResult | None = None


class Scenario:
    """One machine of a lab, its first disk, its workload log and its failovers."""

    def __init__(self, lab: Lab, seed: int, machine: Node | None = None) -> None:
        self.lab = lab
        self.seed = seed
        self.machine: Node = machine if machine is not None else lab.topology.machines[0]
        self.disk: DiskSpec = self.machine.disks[0]
        self.machine_id = ""
        self.disk_id = ""
        self.disk_ids: dict[str, str] = {}  # every disk of the machine: name -> disk id

    @property
    def log_path(self) -> Path:
        return self.lab.node_dir(self.machine) / "writes.log"

    @property
    def image(self) -> Path:
        return self.lab.disk_path(self.machine, self.disk.name)

    def _workload_cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "agent.workload", *args, "--log", str(self.log_path), "--seed", str(self.seed)]

    def prefill(self, fraction: float) -> None:
        cmd = self._workload_cmd("prefill", "--image", str(self.image), "--disk-index", "0",
                                 "--size-bytes", str(self.disk.size_bytes), "--fraction", str(fraction))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise errors.DrlabError(f"prefill failed: {proc.stderr[-2000:]}")

    def start_workload(self, rate_mb_s: float, duration_s: float, disks: Sequence[int] | None = None,
                       *extra: str) -> subprocess.Popen[str]:
        """The workload as a process; ``disks``: the disk indexes it writes across (default: all)."""
        cmd = self._workload_cmd("run", "--socket", str(self.lab.agent_socket(self.machine)),
                                 "--rate-mb-s", str(rate_mb_s), "--duration-s", str(duration_s), "--json",
                                 *(("--disks", ",".join(str(d) for d in disks)) if disks is not None else ()), *extra)
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def finish_workload(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
        out, err = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0:
            raise errors.DrlabError(f"workload failed ({proc.returncode}): {err[-2000:]}")
        return dict(json.loads(out.strip().splitlines()[-1]))

    async def find(self, admin: Any) -> str:
        """The machine's component id (its agent's)."""
        comps = await admin.components()
        self.machine_id = next(c["component_id"] for c in comps
                               if c["role"] == "agent" and c["host_id"] == self.machine.name)
        return self.machine_id

    async def protect(self, admin: Any, timeout_s: float = 180.0, progress: bool = False, **targets: Any) -> float:
        """Enable protection (``targets``: ps_id, mt_id, seed — cs/targets.py) and wait for the end
        of initial replication of every disk of the machine; returns its seconds."""
        await admin.protect(await self.find(admin), **targets)
        self.disk_ids = {d["name"]: d["disk_id"] for d in await admin.disks() if d["machine_id"] == self.machine_id}
        self.disk_id = self.disk_ids[self.disk.name]
        started = time.monotonic()
        await wait_state(admin, self.disk_id, "protected", timeout_s, progress)
        for disk_id in self.disk_ids.values():
            await wait_state(admin, disk_id, "protected", max(1.0, timeout_s - (time.monotonic() - started)))
        return time.monotonic() - started

    def acked_writes(self) -> list[writelog.LogRecord]:
        return [r for r in writelog.read_records(self.log_path) if r.kind == writelog.KIND_WRITE]

    def last_wnum(self) -> int:
        """The agent's write counter as the log knows it: the highest workload wnum (acknowledged or
        in doubt), 0 before the first. Prefill records advance no counter (the agent never saw them:
        the initial replication's point holds them at W 0, common/oracle.py)."""
        return max((r.wnum for r in writelog.read_records(self.log_path) if r.kind != writelog.KIND_PREFILL),
                   default=0)

    def spread_times(self, n: int) -> list[int]:
        acks = [r.ack_ns for r in self.acked_writes()]
        if len(acks) < n + 1:
            raise errors.DrlabError("the workload wrote too little to choose points")
        return [acks[(i + 1) * len(acks) // (n + 1)] for i in range(n)]

    async def failover_and_verify(self, admin: Any, point: Any, label: str) -> PointCheck:
        started = time.monotonic()
        job_id = await admin.failover(self.disk_id, point, image=True)  # the oracle reads the image
        job = await admin.wait_job(job_id, timeout_s=120)
        seconds = time.monotonic() - started
        requested = point if isinstance(point, str) else f"t={point['time_ns']}"
        if job["state"] != "succeeded":
            return PointCheck(label, requested, {}, False, f"job {job['state']}: {job.get('error')}", seconds)
        result = job["result"]
        wnum_hi = int(result["point"]["wnum_hi"])
        res = await asyncio.to_thread(oracle.verify, self.log_path, 0, self.disk.size_bytes, wnum_hi,
                                      Path(result["image_path"]))
        detail = "byte-exact" if res.ok else f"first mismatch at offset {res.first_mismatch_offset}"
        check = PointCheck(label, requested, result, bool(res.ok), detail, seconds)
        if point == "latest" and check.ok and wnum_hi < self.last_wnum():
            check.ok, check.detail = False, f"latest lacks acknowledged writes {wnum_hi + 1}..{self.last_wnum()}"
        return check

    def disk_index(self, name: str) -> int:
        """A disk's index in the agent's config (and in the write log): its place in the topology."""
        return next(i for i, d in enumerate(self.machine.disks) if d.name == name)

    def last_writes(self) -> dict[int, int]:
        """Per disk index, the wnum of its last acknowledged write."""
        return {r.disk: r.wnum for r in self.acked_writes()}

    async def machine_failover_and_verify(self, admin: Any, point: Any, label: str) -> MachineCheck:
        """Fail the whole machine over to ``point``; the oracle checks every disk at the job's W."""
        started = time.monotonic()
        job = await admin.wait_job(await admin.machine_failover(self.machine_id, point, image=True), timeout_s=120)
        return await self.check_machine_job(job, point, label, time.monotonic() - started)

    async def check_machine_job(self, job: dict[str, Any], point: Any, label: str, seconds: float) -> MachineCheck:
        """The oracle's verdict on a finished machine failover job: every disk at the job's W."""
        if job["state"] != "succeeded":
            return MachineCheck(label, point, 0, {}, False, f"job {job['state']}: {job.get('error')}", seconds)
        result = job["result"]
        wnum = int(result["wnum"])
        sizes = {d.name: d.size_bytes for d in self.machine.disks}
        images = [oracle.DiskImage(self.disk_index(d["name"]), d["name"], sizes[d["name"]], Path(d["image_path"]))
                  for d in result["disks"]]
        verdict = await asyncio.to_thread(oracle.verify_machine, self.log_path, images, wnum)
        check = MachineCheck(label, point, wnum, result, verdict.ok, verdict.report(), seconds, verdict)
        if sorted(d["name"] for d in result["disks"]) != sorted(self.disk_ids):
            check.ok, check.detail = False, f"the job covered {[d['name'] for d in result['disks']]} only"
        elif any(int(d["point"]["wnum_hi"]) > wnum for d in result["disks"]):
            check.ok, check.detail = False, "a disk's point is past the machine's W"
        return check

    async def wait_machine_drained(self, admin: Any, timeout_s: float = 60.0) -> dict[str, Any]:
        """Until every disk's MT holds that disk's last acknowledged write (the workload has
        stopped); returns the machine's points then."""
        last = self.last_writes()
        deadline = time.monotonic() + timeout_s
        while True:
            listing = dict(await admin.machine_points(self.machine_id, limit=1000))
            behind = [d["name"] for d in listing["disks"] if last.get(self.disk_index(d["name"]), 0)
                      > int((d["latest"] or {}).get("wnum_hi", 0))]
            if not behind:
                return listing
            if time.monotonic() > deadline:
                raise errors.Unavailable(f"disks {behind} lack acknowledged writes after {timeout_s:.0f} s")
            await asyncio.sleep(0.2)

    async def wait_drained(self, timeout_s: float = 60.0) -> None:
        """Until the MT holds every acknowledged write (the workload has stopped): the batches
        still in flight at the agent or the PS when it stopped must land before "latest" has them."""
        target = self.last_wnum()
        deadline = time.monotonic() + timeout_s
        while True:
            pts = await self.points()
            if pts and max(int(p["wnum_hi"]) for p in pts) >= target:
                return
            if time.monotonic() > deadline:
                raise errors.Unavailable(f"writes up to {target} did not reach the MT within {timeout_s:.0f} s")
            await asyncio.sleep(0.1)

    async def points(self) -> list[dict[str, Any]]:
        mt = self.lab.topology.mts[0]
        client = ApiClient(f"https://{mt.advertised}:{mt.ports['control']}", tls.client_context(self.lab.admin_files))
        try:
            reply = await client.get(f"/v1/disks/{self.disk_id}/points", params={"limit": 1_000_000})
        finally:
            await client.close()
        return list(reply["items"])

    async def rpo_ms(self, since_ns: int) -> tuple[float, float, int]:
        """p50 / p99 of (MT-durable time - first write time) over exact points since ``since_ns``."""
        recent = [p for p in await self.points() if p["t_first_ns"] >= since_ns and p.get("accuracy") == "exact"]
        lags = [(p["received_ns"] - p["t_first_ns"]) / 1e6 for p in recent]
        return report.percentile(lags, 50), report.percentile(lags, 99), len(recent)


async def wait_state(admin: Any, disk_id: str, state: str, timeout_s: float, progress: bool = False) -> None:
    deadline = time.monotonic() + timeout_s
    shown = -1
    while True:
        disk = next(d for d in await admin.disks() if d["disk_id"] == disk_id)
        if disk.get("state") == state:
            return
        pct = int(disk.get("percent") or 0)
        if progress and pct // 25 != shown // 25:
            print(f"  initial replication: {pct} %", flush=True)
            shown = pct
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"disk {disk_id} not {state} after {timeout_s:.0f} s (state {disk.get('state')})")
        await asyncio.sleep(0.2)
