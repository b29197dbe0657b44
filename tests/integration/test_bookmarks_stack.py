"""Bookmarks end to end over real sockets: a real CS, PS, MT and agents in-process (loopback, port 0,
real TLS), workloads writing through the agents' block sockets.

(a) Crash-consistent tags land in the MT's catalog on the batches the agent cut them into, and
    failover by tag (through the CS) gives the oracle's image.
(b) App-consistent tags (the txstore's hooks around the freeze, at the configured interval): the
    store's own check passes on the image of every app-consistent point as it is, and every
    crash-consistent point recovers (redo) to a consistent store.
(c) Multi-machine tags by the CS's two-phase protocol with the causal workload across two
    machines: every committed tag's images (A and B) hold no effect without its cause, and each
    image is the oracle's; pairing points of different tags does show violations (the check bites).
(d) A member that does not freeze in time aborts the bookmark, both members thaw and the
    workload goes on; no point carries the tag.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import causal, txstore, workload
from agent.blockclient import BlockClient
from agent.bookmarks import COMMIT_GRACE_S
from agent.service import AgentService
from common import oracle, tls
from common.config import AgentConfig, DiskConfig, MTConfig, PSConfig
from common.http import ApiClient
from common.wire import writelog
from mt.failover import choose_point, make_image
from mt.service import MTService
from ps.service import PSService
from tests.conftest import CSEnv, start_cs, stop_cs

MiB = 1 << 20
SIZE = 4 * MiB
ROOT = Path(__file__).resolve().parents[2]
FAST: dict[str, Any] = dict(heartbeat_interval_s=0.5, settings_wait_s=5.0, request_timeout_s=5.0,
                            retry_max_backoff_s=0.2)
QUIET: dict[str, Any] = dict(app_consistent_interval_s=0, crash_consistent_interval_s=0)


@dataclass
class Stack:
    tmp: Path
    cs: CSEnv
    admin: ApiClient
    mt: MTService
    ps: PSService
    agents: dict[str, AgentService] = field(default_factory=dict)
    disk_ids: dict[str, str] = field(default_factory=dict)  # machine name -> its disk's id
    machine_ids: dict[str, str] = field(default_factory=dict)

    async def add_machine(self, name: str, **cfg: Any) -> AgentService:
        common = dict(cs_url=self.cs.url, passphrase_file=self.cs.passphrase_file, address="127.0.0.1", **FAST)
        agent = AgentService(AgentConfig(
            data_dir=self.tmp / name, host_id=name, socket_path=self.tmp / f"{name}.sock",
            disks=[DiskConfig("disk0", self.tmp / f"{name}-disk0.img", SIZE)], batch_max_ms=50, **{**common, **cfg}))
        await agent.start()
        self.agents[name] = agent
        self.machine_ids[name] = agent.machine_id
        self.disk_ids[name] = (await self.admin.post(f"/v1/machines/{agent.machine_id}/protect"))["disks"][0]["disk_id"]
        await until(lambda: agent.disk_status("disk0")["state"] == "protected", 30, f"{name} protected")
        return agent

    def socket(self, name: str) -> Path:
        return self.agents[name].cfg.socket_path

    def image_at(self, name: str, point: Any, label: str) -> tuple[Path, Any]:
        """The MT's image of ``name``'s disk at ``point`` (the failover job's own code path)."""
        store = self.mt.workers[self.disk_ids[name]].store
        chosen = choose_point(store.catalog, store.disk_id, point)
        dest = self.tmp / "images" / f"{name}-{label}.img"
        make_image(store, chosen, dest)
        return dest, chosen

    async def failover(self, name: str, point: Any) -> dict[str, Any]:
        """Through the CS: a failover job for the MT; its result."""
        body = {"point": point, "image": True}  # the checks read the image
        job_id = (await self.admin.post(f"/v1/disks/{self.disk_ids[name]}/failover", body))["job_id"]
        deadline = time.monotonic() + 30
        while True:
            job = await self.admin.get(f"/v1/jobs/{job_id}")
            if job["state"] in ("succeeded", "failed"):
                assert job["state"] == "succeeded", job
                return dict(job["result"])
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.05)

    async def drained(self, name: str, log_path: Path) -> None:
        """Until the MT applied every write the machine's log acknowledged."""
        last = max(r.wnum for r in writelog.read_records(log_path))
        catalog = self.mt.catalog
        assert catalog is not None
        await until(lambda: (p := catalog.latest(self.disk_ids[name])) is not None and p.wnum_hi >= last, 30,
                    f"{name} drained")

    async def bookmark(self, timeout_s: float, **body: Any) -> dict[str, Any]:
        """Start a group bookmark and wait until it is committed or aborted."""
        bm = await self.admin.post("/v1/bookmarks", {"timeout_s": timeout_s, **body})
        deadline = time.monotonic() + timeout_s * 2 + 10
        while bm["state"] not in ("committed", "aborted"):
            assert time.monotonic() < deadline, bm
            await asyncio.sleep(0.02)
            bm = await self.admin.get(f"/v1/bookmarks/{bm['bookmark_id']}")
        return dict(bm)


async def until(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout_s} s"
        await asyncio.sleep(0.02)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    env = await start_cs(tmp_path / "cs", bookmark_sweep_interval_s=0.05)
    common = dict(cs_url=env.url, passphrase_file=env.passphrase_file, address="127.0.0.1", **FAST)
    mt = MTService(MTConfig(data_dir=tmp_path / "mt", host_id="mt1", data_port=0, control_port=0, **common))
    ps = PSService(PSConfig(data_dir=tmp_path / "ps", host_id="ps1", data_port=0, **common), poll_interval_s=0.05)
    admin = ApiClient(env.url, tls.client_context(env.admin_files), timeout_s=15.0)
    s = Stack(tmp_path, env, admin, mt, ps)
    await mt.start()
    await ps.start()
    try:
        yield s
    finally:
        for agent in s.agents.values():
            await agent.stop()
        await ps.stop()
        await mt.stop()
        await admin.close()
        await stop_cs(env)


def measured(label: str, values: list[float]) -> str:
    if not values:
        return f"{label}: none"
    return (f"{label}: n={len(values)} p50={statistics.median(values):.1f} ms "
            f"max={max(values):.1f} ms")


# ---------------------------------------------------------------------------------------- (a)


@pytest.mark.timeout(60)
async def test_crash_consistent_tags_mark_the_right_points_and_failover_by_tag_is_exact(stack: Stack,
                                                                                        seed: int) -> None:
    s = stack
    agent = await s.add_machine("m1", crash_consistent_interval_s=0.25, app_consistent_interval_s=0)
    log_path = s.tmp / "m1-writes.log"
    params = workload.WorkloadParams(socket_path=s.socket("m1"), log_path=log_path, seed=seed, rate_mb_s=4.0,
                                     duration_s=2.0, write_sizes=[(4096, 0.7), (65536, 0.3)], hot_region_mib=4)
    stats = await workload.run_workload(params)
    assert stats.error is None and stats.writes > 50
    await s.drained("m1", log_path)
    assert agent.bookmarks is not None
    tags = [r for r in agent.bookmarks.history if r["kind"] == "crash" and r["outcome"] == "tagged"]
    assert len(tags) >= 5, list(agent.bookmarks.history)
    mt = ApiClient(f"https://127.0.0.1:{s.mt.control_port}", tls.client_context(s.cs.admin_files))
    try:
        for rec in tags:  # each tag is on the very batch the agent cut it into
            items = (await mt.get(f"/v1/disks/{s.disk_ids['m1']}/points", params={"tag": rec["tag"]}))["items"]
            assert [[p["gen"], p["seq"]] for p in items] == [rec["points"][s.disk_ids["m1"]]], rec
            assert rec["tag"] in items[0]["tags"] and items[0]["accuracy"] == "exact"
    finally:
        await mt.close()
    for rec in (tags[0], tags[len(tags) // 2], tags[-1]):
        result = await s.failover("m1", {"tag": rec["tag"]})
        assert [result["point"]["gen"], result["point"]["seq"]] == rec["points"][s.disk_ids["m1"]]
        check = oracle.verify(log_path, 0, SIZE, int(result["point"]["wnum_hi"]), Path(result["image_path"]))
        assert check.ok, (rec["tag"], check.detail)
    print(f"\ncrash-consistent tags: {len(tags)} in {stats.duration_s:.1f} s of writes, "
          f"{stats.writes} writes; failover by tag: 3 of 3 byte-exact")


# ---------------------------------------------------------------------------------------- (b)


def head(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def hook(control: Path, command: str) -> list[str]:
    return [sys.executable, "-m", "agent.txstore", "hook", "--control", str(control), command]


@pytest.mark.timeout(180)  # ~6 s alone; one failover image per crash point, slow on a loaded machine
async def test_txstore_passes_its_check_at_every_app_consistent_point_and_recovers_at_crash_ones(
        stack: Stack, seed: int) -> None:
    s = stack
    control = s.tmp / "txstore.sock"
    agent = await s.add_machine("m2", app_consistent_interval_s=0.5, crash_consistent_interval_s=0,
                                pre_freeze_hook=hook(control, "freeze"), post_thaw_hook=hook(control, "thaw"),
                                hook_timeout_s=10.0)
    async with BlockClient(s.socket("m2")) as client:
        store = txstore.TxStore.new(client, accounts=32, log_blocks=8, seed=seed)
        await store.format()
        formatted_wnum = store.stats.last_wnum
        server = txstore.ControlServer(control, store)
        await server.start()
        serving_ns = time.time_ns()
        try:
            stats = await store.run(asyncio.Event(), duration_s=3.5, pause_s=0.0005)
        finally:
            stopping_ns = time.time_ns()
            await server.stop()
    assert stats.transactions > 100 and stats.quiesces >= 4, stats
    catalog = s.mt.catalog
    assert catalog is not None and agent.bookmarks is not None
    await until(lambda: (p := catalog.latest(s.disk_ids["m2"])) is not None and p.wnum_hi >= stats.last_wnum, 30,
                "drained")
    history = [r for r in agent.bookmarks.history if r["kind"] == "app" and r["t_start_ns"] < stopping_ns]
    await until(lambda: all(r["outcome"] != "running" for r in history), 10, "app bookmarks done")
    apps = []
    for rec in history:
        if serving_ns <= rec["t_start_ns"] < stopping_ns - 500_000_000:  # the store ran all along
            assert rec["outcome"] == "tagged", rec
        elif rec["outcome"] != "tagged":  # before protection, or the store's control socket not there
            assert rec["error"] in ("not protected yet: disk0", "pre-freeze hook exited with status 1"), rec
        if rec["outcome"] == "tagged":
            apps.append(rec)
    assert len(apps) >= 5, list(agent.bookmarks.history)
    for rec in apps:  # the hooks ran in order around the freeze
        assert rec["t_pre_end_ns"] <= rec["t_frozen_ns"] <= rec["t_tagged_ns"] <= rec["t_thawed_ns"] \
            <= rec["t_post_start_ns"], rec
    size = txstore.Layout(32, 8, 0).size_bytes
    for i, rec in enumerate(apps):
        image, point = s.image_at("m2", {"tag": rec["tag"]}, f"app{i}")
        assert txstore.check(head(image, size)) == [], (rec["tag"], point)
    raw_failures = crash_points = 0
    for point in catalog.all(s.disk_ids["m2"]):
        if point.wnum_hi < formatted_wnum or point.accuracy_name == "none":
            continue
        image, _ = s.image_at("m2", {"time_ns": point.t_last_ns}, "crash")
        data = head(image, size)
        crash_points += 1
        raw_failures += bool(txstore.check(data))
        assert txstore.check(txstore.recover(data)) == [], point
    assert raw_failures > 0  # points cut inside a transaction exist and the check sees them
    result = await s.failover("m2", "latest-app-consistent")  # through the CS and the MT job
    assert result["point"]["seq"] == apps[-1]["points"][s.disk_ids["m2"]][1]
    assert txstore.check(head(Path(result["image_path"]), size)) == []
    freeze = [r["freeze_ms"] for r in apps]
    hooks = [(r["t_pre_end_ns"] - r["t_pre_start_ns"]) / 1e6 for r in apps]
    print(f"\ntxstore: {stats.transactions} transactions, {len(apps)} app-consistent points all consistent, "
          f"{crash_points} crash-consistent points all recovered ({raw_failures} needed the redo); "
          f"{measured('freeze', freeze)}; {measured('pre-freeze hook', hooks)}")


# ---------------------------------------------------------------------------------------- (c), (d)


@dataclass
class Causal:
    stats: causal.CausalStats
    stop: asyncio.Event
    task: asyncio.Task[causal.CausalStats]
    a_log: Path
    b_log: Path


async def start_causal(s: Stack, seed: int) -> Causal:
    stop = asyncio.Event()
    a_log, b_log = s.tmp / "a-writes.log", s.tmp / "b-writes.log"
    task = asyncio.create_task(causal.run(s.socket("a"), s.socket("b"), a_log, b_log, seed=seed, slots=SIZE // 4096,
                                          duration_s=60, pause_s=0.002, stop=stop), name="causal")
    await asyncio.sleep(0.3)
    return Causal(causal.CausalStats(), stop, task, a_log, b_log)


async def stop_causal(c: Causal) -> causal.CausalStats:
    c.stop.set()
    stats = await c.task
    assert stats.error is None, stats
    return stats


def effects_so_far(c: Causal) -> int:
    return len(writelog.read_records(c.b_log))


@pytest.mark.timeout(60)
async def test_committed_group_tags_hold_no_effect_without_its_cause(stack: Stack, seed: int) -> None:
    s = stack
    await s.add_machine("a", **QUIET)
    await s.add_machine("b", **QUIET)
    await s.admin.put("/v1/groups/pair", {"machines": [s.machine_ids["a"], s.machine_ids["b"]]})
    c = await start_causal(s, seed)
    done: list[dict[str, Any]] = []
    try:
        for i in range(10):
            done.append(await s.bookmark(5.0, group="pair", name=f"mm{i}", consistency=("crash", "app")[i % 2]))
            await asyncio.sleep(0.1)
    finally:
        stats = await stop_causal(c)
    committed = [b for b in done if b["state"] == "committed"]
    assert len(committed) == len(done), [b["reason"] for b in done if b["state"] != "committed"]
    await s.drained("a", c.a_log)
    await s.drained("b", c.b_log)
    images = {}
    for b in committed:
        (img_a, pa), (img_b, pb) = (s.image_at(m, {"tag": b["tag"]}, b["name"]) for m in ("a", "b"))
        for machine, point in (("a", pa), ("b", pb)):  # the tag is on the batch the member reported
            member = next(m for m in b["members"] if m["machine_id"] == s.machine_ids[machine])
            assert member["points"] == {s.disk_ids[machine]: {"gen": point.gen, "seq": point.seq}}
        got = causal.check(c.a_log, c.b_log, img_a, img_b)
        assert got.violations == [], (b["tag"], got.violations[:5])
        for log_path, img, point in ((c.a_log, img_a, pa), (c.b_log, img_b, pb)):
            assert oracle.verify(log_path, 0, SIZE, point.wnum_hi, img).ok, (b["tag"], img)
        images[b["tag"]] = (img_a, img_b, got)
    first, last = images[committed[0]["tag"]], images[committed[-1]["tag"]]
    assert last[2].effects > first[2].effects > 0
    # the check bites: A as of the first tag with B as of the last one holds effects without causes
    assert causal.check(c.a_log, c.b_log, first[0], last[1]).violations
    # and through the CS: both disks failed over to the latest multi-machine point
    ra, rb = await s.failover("a", "latest-multi-machine"), await s.failover("b", "latest-multi-machine")
    assert causal.check(c.a_log, c.b_log, Path(ra["image_path"]), Path(rb["image_path"])).violations == []
    freeze = [m["freeze_ms"] for b in committed for m in b["members"]]
    latency = [b["latency_ms"] for b in committed]
    print(f"\ncausal: {stats.causes} causes, {stats.effects} effects; {len(committed)} group bookmarks committed, "
          f"0 violations; {measured('member freeze', freeze)}; {measured('tag latency', latency)}")


@pytest.mark.timeout(60)
async def test_a_member_that_does_not_freeze_in_time_aborts_and_both_thaw(stack: Stack, seed: int) -> None:
    s = stack
    slow = s.tmp / "slow"
    pre = ["/bin/sh", "-c", f"if [ -e {slow} ]; then sleep 30; fi"]
    await s.add_machine("a", **QUIET)
    b_agent = await s.add_machine("b", pre_freeze_hook=pre, hook_timeout_s=20.0, **QUIET)
    a_agent = s.agents["a"]
    c = await start_causal(s, seed)
    try:
        ok = await s.bookmark(5.0, machines=[s.machine_ids["a"], s.machine_ids["b"]], name="before")
        assert ok["state"] == "committed", ok
        slow.touch()
        started = time.monotonic()
        failed = await s.bookmark(1.0, machines=[s.machine_ids["a"], s.machine_ids["b"]], name="slow")
        aborted_after = time.monotonic() - started
        before_effects = effects_so_far(c)
        await asyncio.sleep(0.5)
        assert effects_so_far(c) > before_effects  # writes go on on both machines
    finally:
        stats = await stop_causal(c)
    assert failed["state"] == "aborted" and s.machine_ids["b"] in failed["reason"], failed
    assert aborted_after < 2.5
    assert a_agent.bookmarks is not None and b_agent.bookmarks is not None
    a_rec = next(r for r in a_agent.bookmarks.history if r["tag"] == failed["tag"])
    b_rec = next(r for r in b_agent.bookmarks.history if r["tag"] == failed["tag"])
    # A thawed on the abort, or at the latest at the CS's deadline plus the grace for a late commit
    assert a_rec["outcome"] in ("thawed", "expired") and a_rec["freeze_ms"] <= 1000 + COMMIT_GRACE_S * 1000 + 100, a_rec
    assert b_rec["outcome"] == "failed" and "pre-freeze hook timed out" in b_rec["error"], b_rec
    for name in ("a", "b"):
        catalog = s.mt.catalog
        assert catalog is not None and catalog.by_tag(s.disk_ids[name], failed["tag"]) is None
        assert catalog.by_tag(s.disk_ids[name], ok["tag"]) is not None
        assert not s.agents[name].replicator._write_lock.locked()  # type: ignore[union-attr]
    print(f"\nabort: {failed['reason']} after {aborted_after:.2f} s; A frozen {a_rec['freeze_ms']:.0f} ms; "
          f"{stats.effects} effects written across it")


async def test_drlab_bookmark_commands(stack: Stack) -> None:
    s = stack
    await s.add_machine("a", **QUIET)

    async def drlab(*argv: str) -> tuple[int, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "deploy.cli", "--cs-url", s.cs.url, "--admin-dir", str(s.cs.admin_files.directory),
            "--json", *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, json.loads(out) if out.strip() else err.decode()

    code, group = await drlab("group", "set", "solo", s.machine_ids["a"])
    assert code == 0 and group["machines"] == [s.machine_ids["a"]]
    code, bm = await drlab("bookmark", "create", "--group", "solo", "--name", "cli-1", "--wait")
    assert code == 0 and (bm["state"], bm["tag"]) == ("committed", "group-app:cli-1"), bm
    code, items = await drlab("bookmark", "list")
    assert code == 0 and [i["tag"] for i in items] == ["group-app:cli-1"]
    code, shown = await drlab("bookmark", "show", bm["bookmark_id"])
    assert code == 0 and shown["members"][0]["state"] == "tagged"
    code, err = await drlab("bookmark", "create", "--group", "nosuch")
    assert code == 2 and "no replication group" in err
