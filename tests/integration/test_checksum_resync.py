"""Checksum resync and online verify end to end, over real sockets: a real CS, PS, MT and agent
in-process (loopback, port 0, real TLS), the workload writing through the agent's block socket
and the oracle checking failover to latest.

(a) A resync asked by the user on a disk whose replica equals the source compares every block
    and sends none, then the disk is protected again.
(b) Online verify reports nothing on a healthy disk while a workload writes; replica blocks
    corrupted behind the MT's back are reported exactly, while the workload keeps writing; the
    repair resync it starts (reason ``verify``) sends only those blocks and what was written
    meanwhile, and the failed-over image equals the oracle's.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import workload
from agent.service import AgentService
from common import oracle, tls
from common.config import AgentConfig, DiskConfig, MTConfig, PSConfig
from common.http import ApiClient
from common.wire import writelog
from mt.service import MTService
from ps.service import PSService
from tests.conftest import CSEnv, start_cs, stop_cs

MiB = 1 << 20
SIZE = 16 * MiB
BLOCK = 128 << 10
HOT = 4 * MiB  # the workload writes only here
ROOT = Path(__file__).resolve().parents[2]
FAST: dict[str, Any] = dict(heartbeat_interval_s=0.5, settings_wait_s=0.5, request_timeout_s=5.0,
                            retry_max_backoff_s=0.2)


@dataclass
class Site:
    cs: CSEnv
    admin: ApiClient
    ps: PSService
    mt: MTService
    agent: AgentService
    cfg: AgentConfig
    log_path: Path
    disk_id: str = ""

    async def disk(self) -> dict[str, Any]:
        return next(d for d in (await self.admin.get("/v1/disks"))["items"] if d["disk_id"] == self.disk_id)

    async def wait_protected(self, generation: int, timeout_s: float = 40.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            disk = await self.disk()
            if disk["generation"] == generation and disk["state"] == "protected" \
                    and (disk["last_resync"] or {}).get("state") == "done":
                return disk
            assert time.monotonic() < deadline, f"not protected under generation {generation}: {disk}"
            await asyncio.sleep(0.1)

    async def verify(self, timeout_s: float = 60.0, **body: Any) -> dict[str, Any]:
        asked = await self.admin.post(f"/v1/disks/{self.disk_id}/verify", {"block_bytes": BLOCK, **body})
        deadline = time.monotonic() + timeout_s
        while True:
            v = await self.admin.get(f"/v1/disks/{self.disk_id}/verify/{asked['verify_id']}")
            if v["state"] in ("succeeded", "failed"):
                assert v["state"] == "succeeded", v
                return dict(v)
            assert time.monotonic() < deadline, f"verify not finished: {v}"
            await asyncio.sleep(0.1)

    @property
    def replica(self) -> Path:
        return self.mt.cfg.data_dir / "replicas" / f"{self.disk_id}.img"

    def latest_wnum(self) -> int:
        assert self.mt.catalog is not None
        point = self.mt.catalog.latest(self.disk_id)
        return point.wnum_hi if point is not None else 0


@pytest.fixture
async def site(tmp_path: Path, seed: int) -> AsyncIterator[Site]:
    env = await start_cs(tmp_path / "cs")
    common = dict(cs_url=env.url, passphrase_file=env.passphrase_file, address="127.0.0.1", **FAST)
    mt = MTService(MTConfig(data_dir=tmp_path / "mt", host_id="mt1", data_port=0, control_port=0, **common))
    ps = PSService(PSConfig(data_dir=tmp_path / "ps", host_id="ps1", data_port=0, **common), poll_interval_s=0.1)
    image, log_path = tmp_path / "disk0.img", tmp_path / "writes.log"
    await asyncio.to_thread(workload.prefill, image, 0, SIZE, 0.5, log_path, seed)
    cfg = AgentConfig(data_dir=tmp_path / "agent", host_id="m1", socket_path=tmp_path / "agent.sock",
                      disks=[DiskConfig("disk0", image, SIZE)], batch_max_ms=50, hash_block_bytes=BLOCK,
                      hash_request_bytes=4 * MiB, **common)
    agent = AgentService(cfg)
    admin = ApiClient(env.url, tls.client_context(env.admin_files), timeout_s=15.0)
    s = Site(env, admin, ps, mt, agent, cfg, log_path)
    started: list[Any] = []
    try:
        for svc in (mt, ps, agent):
            await svc.start()
            started.append(svc)
        comps = (await admin.get("/v1/components"))["items"]
        machine = next(c["component_id"] for c in comps if c["role"] == "agent")
        s.disk_id = (await admin.post(f"/v1/machines/{machine}/protect"))["disks"][0]["disk_id"]
        first = await s.wait_protected(1)
        assert (first["last_resync"]["reason"], first["last_resync"]["mode"]) == ("initial", "copy")
        yield s
    finally:
        for svc in reversed(started):
            await svc.stop()
        await admin.close()
        await stop_cs(env)


async def resync_points(s: Site, generation: int) -> tuple[int, int]:
    """(data bytes, batches) the MT applied under ``generation``."""
    assert s.mt.catalog is not None
    points = [p for p in s.mt.catalog.all(s.disk_id) if p.gen == generation]
    return sum(p.data_bytes for p in points), len(points)


async def drlab(s: Site, *argv: str) -> tuple[int, str]:
    """Run the `drlab` command (a process) against the site's CS; (exit code, stdout)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "deploy.cli", "--cs-url", s.cs.url, "--admin-dir", str(s.cs.admin_files.directory),
        "--json", *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode in (0, 1), err.decode()[-2000:]
    return proc.returncode, out.decode()


@pytest.mark.timeout(60)
async def test_user_resync_of_an_equal_replica_sends_nothing(site: Site) -> None:
    s = site
    await asyncio.sleep(0.3)
    assert s.replica.read_bytes() == s.cfg.disks[0].path.read_bytes()
    code, out = await drlab(s, "disk", "resync", s.disk_id)  # reason "user"
    assert code == 0 and json.loads(out) == {"generation": 2}, out
    disk = await s.wait_protected(2)
    last = disk["last_resync"]
    print(f"\nuser resync of a {SIZE // MiB} MiB disk: compared {last['bytes_compared']} bytes, "
          f"sent {last['bytes_sent']} bytes in {(last['ended_ns'] - last['started_ns']) / 1e9:.2f} s")
    assert (last["reason"], last["mode"], last["bytes_compared"], last["bytes_sent"]) == (
        "user", "checksum", SIZE, 0)
    data_bytes, batches = await resync_points(s, 2)
    assert data_bytes == 0 and batches >= 2  # RESYNC_START and RESYNC_DONE, empty
    history = (await s.admin.get(f"/v1/disks/{s.disk_id}/resyncs"))["items"]
    assert [(r["generation"], r["reason"]) for r in history] == [(2, "user"), (1, "initial")]
    assert s.replica.read_bytes() == s.cfg.disks[0].path.read_bytes()
    code, out = await drlab(s, "disk", "verify", s.disk_id, "--wait", "--block-bytes", str(BLOCK))
    verified = json.loads(out)
    assert code == 0 and verified["state"] == "succeeded" and verified["generation"] == 2
    assert verified["result"]["differing"] == [] and verified["result"]["blocks_compared"] == SIZE // BLOCK
    code, out = await drlab(s, "disk", "resyncs", s.disk_id)
    assert code == 0 and [r["reason"] for r in json.loads(out)] == ["user", "initial"]
    # --wait follows the resync until the disk is protected again (plain lines / JSON: the disks)
    code, out = await drlab(s, "disk", "resync", s.disk_id, "--wait", "--timeout-s", "30")
    [disk] = json.loads(out)
    assert code == 0 and (disk["disk_id"], disk["state"], disk["generation"]) == (s.disk_id, "protected", 3), out


def corrupt(replica: Path, rng: random.Random, count: int) -> list[int]:
    """Garble a few bytes of ``count`` blocks outside the workload's region; their offsets."""
    blocks = sorted(rng.sample(range(HOT // BLOCK, SIZE // BLOCK), count))
    fd = os.open(replica, os.O_WRONLY)
    try:
        for b in blocks:
            os.pwrite(fd, os.urandom(512), b * BLOCK + rng.randrange(BLOCK - 512))
        os.fsync(fd)
    finally:
        os.close(fd)
    return [b * BLOCK for b in blocks]


def blocks_written(log_path: Path, since_ns: int, until_ns: int) -> set[int]:
    out = set()
    for r in writelog.read_records(log_path):
        if r.kind == writelog.KIND_WRITE and since_ns <= r.ack_ns <= until_ns:
            out.update(range(r.offset // BLOCK, (r.end - 1) // BLOCK + 1))
    return out


@pytest.mark.timeout(90)
async def test_verify_finds_corruption_under_writes_and_repair_sends_only_it(site: Site, seed: int) -> None:
    s = site
    stop = asyncio.Event()
    params = workload.WorkloadParams(socket_path=s.cfg.socket_path, log_path=s.log_path, rate_mb_s=2.0,
                                     duration_s=120.0, write_sizes=[(4096, 0.6), (65536, 0.4)],
                                     overwrite_share=1.0, hot_region_mib=HOT / MiB)
    writer = asyncio.create_task(workload.run_workload(params, stop=stop), name="test-workload")
    try:
        await asyncio.sleep(1.0)
        healthy = await s.verify()
        res = healthy["result"]
        print(f"\nverify of a healthy disk under writes: {res['blocks_compared']} blocks, "
              f"differing {res['differing']}, unsettled {len(res['unsettled'])}, rounds {res['rounds']}")
        assert res["differing"] == [] and res["blocks_compared"] == SIZE // BLOCK and res["bytes_compared"] == SIZE
        assert all(o < HOT for o in res["unsettled"])

        bad = corrupt(s.replica, random.Random(seed), 3)
        found = await s.verify(repair=True)
        res = found["result"]
        print(f"verify after corrupting blocks {bad}: differing {res['differing']}, "
              f"unsettled {len(res['unsettled'])}, rounds {res['rounds']}")
        assert res["differing"] == bad and res["repair_generation"] == 2
        disk = await s.wait_protected(2)
    finally:
        stop.set()
        stats = await writer
    assert stats.error is None and stats.writes > 50, stats
    last = disk["last_resync"]
    in_flight = blocks_written(s.log_path, last["started_ns"] - 2_000_000_000, last["ended_ns"])
    bound = (len(bad) + len(in_flight)) * BLOCK
    print(f"repair resync of a {SIZE // MiB} MiB disk: compared {last['bytes_compared']} bytes, sent "
          f"{last['bytes_sent']} bytes ({last['bytes_sent'] / SIZE:.2%} of the disk); bound: {len(bad)} corrupt + "
          f"{len(in_flight)} written blocks = {bound} bytes")
    assert (last["reason"], last["mode"], last["bytes_compared"]) == ("verify", "checksum", SIZE)
    assert len(bad) * BLOCK <= last["bytes_sent"] <= bound

    target = stats.last_wnum
    deadline = time.monotonic() + 30
    while s.latest_wnum() < target:
        assert time.monotonic() < deadline, f"writes up to {target} did not reach the MT"
        await asyncio.sleep(0.1)
    job = await s.admin.post(f"/v1/disks/{s.disk_id}/failover", {"point": "latest", "image": True})
    done = await s.cs.admin.wait_job(job["job_id"], timeout_s=30)
    assert done["state"] == "succeeded", done
    point = done["result"]["point"]
    assert point["wnum_hi"] >= target
    check = await asyncio.to_thread(oracle.verify, s.log_path, 0, SIZE, point["wnum_hi"],
                                    Path(done["result"]["image_path"]))
    assert check.ok, check.detail
