"""The agent's side of bookmarks (agent/bookmarks.py, agent/quiesce.py) against a stand-in replicator with the real
freeze semantics (one asyncio lock that every write takes): hooks in order around the freeze, hook
failures and timeouts abort without a tag, group members report and never stay frozen past the
deadline, and the intervals schedule crash- and app-consistent tags."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import bookmarks
from agent.bookmarks import BookmarkAgent
from agent.quiesce import FreezeGuard, run_hook
from common import errors
from common.config import AgentConfig

BID = "b0" * 16


@dataclass
class Pipe:
    name: str
    disk_id: str
    state: str = "protected"
    mode: str = "data"


@dataclass
class FakeReplicator:
    pipelines: dict[int, Pipe] = field(default_factory=lambda: {0: Pipe("disk0", "d0" * 16),
                                                                 1: Pipe("disk1", "d1" * 16)})
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    events: list[tuple[str, int]] = field(default_factory=list)
    tags: list[bytes] = field(default_factory=list)

    async def freeze(self) -> None:
        await self.lock.acquire()
        self.events.append(("freeze", time.time_ns()))

    def thaw(self) -> None:
        assert self.lock.locked(), "thaw without a freeze"
        self.lock.release()
        self.events.append(("thaw", time.time_ns()))

    def bookmark(self, tag: bytes) -> dict[str, tuple[int, int]]:
        assert self.lock.locked() or tag.startswith(b"crash:"), "an app-consistent tag outside the freeze"
        self.tags.append(tag)
        self.events.append(("tag", time.time_ns()))
        return {p.disk_id: (1, len(self.tags)) for p in self.pipelines.values()}

    async def write(self) -> None:
        async with self.lock:
            self.events.append(("write", time.time_ns()))

    def frozen_spans(self) -> list[tuple[int, int]]:
        starts = [t for e, t in self.events if e == "freeze"]
        ends = [t for e, t in self.events if e == "thaw"]
        assert len(starts) == len(ends)
        return list(zip(starts, ends, strict=True))

    def writes_inside_freezes(self) -> int:
        spans = self.frozen_spans()
        return sum(1 for e, t in self.events if e == "write" and any(a < t < b for a, b in spans))


@dataclass
class World:
    rep: FakeReplicator
    agent: BookmarkAgent
    reports: list[tuple[str, dict[str, Any]]]
    tmp: Path
    writer: asyncio.Task[None]

    def reported(self, state: str) -> list[dict[str, Any]]:
        return [body for _, body in self.reports if body["state"] == state]


def script(tmp: Path, name: str, body: str) -> list[str]:
    path = tmp / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return [str(path)]


def stamp_hook(tmp: Path, name: str, extra: str = "") -> list[str]:
    return script(tmp, name, f'echo "{name} $(date +%s%N) $DRLAB_HOOK $DRLAB_BOOKMARK_TAG '
                             f'${{DRLAB_BOOKMARK_OUTCOME:-}}" >> {tmp}/hooks.log\n{extra}')


def hook_log(tmp: Path) -> list[list[str]]:
    path = tmp / "hooks.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


async def make_world(tmp: Path, **cfg: Any) -> AsyncIterator[World]:
    values: dict[str, Any] = {"data_dir": tmp, "app_consistent_interval_s": 0, "crash_consistent_interval_s": 0,
                              "freeze_timeout_s": 2.0, "hook_timeout_s": 5.0, "retry_max_backoff_s": 0.05}
    values.update(cfg)
    rep = FakeReplicator()
    reports: list[tuple[str, dict[str, Any]]] = []

    async def report(bid: str, body: dict[str, Any]) -> dict[str, Any]:
        reports.append((bid, body))
        return {"ok": True, "state": "preparing", "phase": "prepare"}

    agent = BookmarkAgent(AgentConfig(**values), rep, report)
    agent.start()

    async def keep_writing() -> None:
        while True:
            await rep.write()
            await asyncio.sleep(0.001)

    writer = asyncio.create_task(keep_writing())
    try:
        yield World(rep, agent, reports, tmp, writer)
    finally:
        writer.cancel()
        await asyncio.wait([writer])
        await agent.stop()
        assert not rep.lock.locked(), "a freeze outlived the agent"


@pytest.fixture
async def world(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    cfg = getattr(request, "param", {})
    async for w in make_world(tmp_path, **cfg):
        yield w


def hooks(tmp: Path, pre_extra: str = "", post_extra: str = "") -> dict[str, Any]:
    return {"pre_freeze_hook": stamp_hook(tmp, "pre", pre_extra), "post_thaw_hook": stamp_hook(tmp, "post", post_extra)}


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")
    except OSError:
        return True


async def until(pred: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_app_bookmark_runs_the_hooks_in_order_around_the_freeze(tmp_path: Path) -> None:
    async for w in make_world(tmp_path, **hooks(tmp_path)):
        await asyncio.sleep(0.05)
        rec = await w.agent.bookmark_now("app")
        assert rec["outcome"] == "tagged" and rec["error"] is None, rec
        assert rec["tag"].startswith("app:") and w.rep.tags == [rec["tag"].encode()]
        assert rec["points"] == {"d0" * 16: [1, 1], "d1" * 16: [1, 1]}
        (pre, pre_ns, pre_which, pre_tag, *_), (post, post_ns, post_which, post_tag, outcome) = hook_log(tmp_path)
        assert (pre, pre_which, pre_tag, post, post_which, post_tag, outcome) == (
            "pre", "pre-freeze", rec["tag"], "post", "post-thaw", rec["tag"], "tagged")
        [(frozen, thawed)] = w.rep.frozen_spans()
        tag_ns = next(t for e, t in w.rep.events if e == "tag")
        assert int(pre_ns) <= rec["t_pre_end_ns"] <= frozen <= tag_ns <= thawed <= int(post_ns)
        assert w.rep.writes_inside_freezes() == 0  # writes were held
        writes = sum(e == "write" for e, _ in w.rep.events)
        await asyncio.sleep(0.05)
        assert sum(e == "write" for e, _ in w.rep.events) > writes  # and released
        assert 0 < rec["freeze_ms"] < 1000 and rec["hook_s"] > 0


@pytest.mark.parametrize("body, error", [("exit 3", "pre-freeze hook exited with status 3"),
                                         ("sleep 30 & echo $! > {tmp}/pid; wait", "pre-freeze hook timed out")])
async def test_a_failing_or_hanging_pre_freeze_hook_aborts_without_freezing_or_tagging(
        tmp_path: Path, body: str, error: str) -> None:
    cfg = hooks(tmp_path, pre_extra=body.format(tmp=tmp_path))
    async for w in make_world(tmp_path, hook_timeout_s=0.5, **cfg):
        started = time.monotonic()
        rec = await w.agent.bookmark_now("app")
        assert rec["outcome"] == "failed" and rec["error"].startswith(error), rec
        assert time.monotonic() - started < 3
        assert w.rep.tags == [] and w.rep.frozen_spans() == []
        assert [line[0] for line in hook_log(tmp_path)] == ["pre", "post"]  # post-thaw still runs
        assert hook_log(tmp_path)[1][4] == "failed"
        if "sleep" in body:  # the hung hook was killed with its process group (its child too)
            await until(lambda: gone(int((tmp_path / "pid").read_text())), 5)


async def test_group_member_freezes_reports_and_tags_on_commit(world: World) -> None:
    w = world
    w.agent.on_settings({"bookmarks": [{"bookmark_id": BID, "tag": "group-crash:g1", "consistency": "crash",
                                        "phase": "prepare", "remaining_ms": 5000}]})
    await until(lambda: w.reported("frozen"))
    assert w.rep.lock.locked()
    await asyncio.sleep(0.1)
    assert w.rep.tags == []  # no cut before the decision
    w.agent.on_settings({"bookmarks": [{"bookmark_id": BID, "tag": "group-crash:g1", "consistency": "crash",
                                        "phase": "commit", "remaining_ms": 4000}]})
    await until(lambda: w.reported("tagged"))
    [frozen], [tagged] = w.reported("frozen"), w.reported("tagged")
    assert frozen["session"] == tagged["session"] and len(frozen["session"]) == 32
    assert tagged["points"] == {"d0" * 16: [1, 1], "d1" * 16: [1, 1]} and tagged["freeze_ms"] >= 100
    assert w.rep.tags == [b"group-crash:g1"] and not w.rep.lock.locked()
    assert w.rep.writes_inside_freezes() == 0
    # the same bookmark again (a later document) starts nothing
    w.agent.on_settings({"bookmarks": [{"bookmark_id": BID, "tag": "group-crash:g1", "consistency": "crash",
                                        "phase": "prepare", "remaining_ms": 4000}]})
    await asyncio.sleep(0.05)
    assert len(w.reported("frozen")) == 1


@pytest.mark.parametrize("world", [{"freeze_timeout_s": 0.3}], indirect=True)
async def test_group_member_thaws_at_its_deadline_when_the_cs_says_nothing(world: World) -> None:
    w = world
    w.agent.on_settings({"bookmarks": [{"bookmark_id": BID, "tag": "group-app:g2", "consistency": "app",
                                        "phase": "prepare", "remaining_ms": 5000}]})
    await until(lambda: w.reported("expired"), 5)
    [(frozen, thawed)] = w.rep.frozen_spans()
    assert 0.3 <= (thawed - frozen) / 1e9 < 0.45  # never beyond the freeze deadline (plus a tick)
    assert w.rep.tags == []
    # the commit that comes too late is not acted on
    w.agent.on_settings({"bookmarks": [{"bookmark_id": BID, "tag": "group-app:g2", "consistency": "app",
                                        "phase": "commit", "remaining_ms": 0}]})
    await asyncio.sleep(0.1)
    assert w.rep.tags == [] and not w.rep.lock.locked()


@pytest.mark.parametrize("world", [{"freeze_timeout_s": 10.0}], indirect=True)
async def test_group_member_does_not_outstay_the_cs_deadline_by_more_than_the_grace(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bookmarks, "COMMIT_GRACE_S", 0.2)
    w = world
    w.agent.on_settings({"bookmarks": [{"bookmark_id": BID, "tag": "group-app:g5", "consistency": "crash",
                                        "phase": "prepare", "remaining_ms": 300}]})
    await until(lambda: w.reported("expired"), 5)
    [(frozen, thawed)] = w.rep.frozen_spans()
    assert 0.4 <= (thawed - frozen) / 1e9 < 0.6 and w.rep.tags == []  # ~0.3 s left + 0.2 s grace, not 10 s


async def test_group_member_thaws_on_abort_and_when_the_bookmark_is_gone(world: World) -> None:
    w = world
    entry = {"bookmark_id": BID, "tag": "group-app:g3", "consistency": "crash", "phase": "prepare",
             "remaining_ms": 5000}
    w.agent.on_settings({"bookmarks": [entry]})
    await until(lambda: w.reported("frozen"))
    w.agent.on_settings({"bookmarks": [{**entry, "phase": "abort"}]})
    await until(lambda: w.reported("thawed"))
    assert w.reported("thawed")[0]["error"] == "bookmark aborted" and not w.rep.lock.locked()
    other = {**entry, "bookmark_id": "c1" * 16, "tag": "group-app:g4"}
    w.agent.on_settings({"bookmarks": [other]})
    await until(lambda: len(w.reported("frozen")) == 2)
    w.agent.on_settings({"disks": []})  # gone from the document
    await until(lambda: len(w.reported("thawed")) == 2)
    assert w.rep.tags == [] and not w.rep.lock.locked()


async def test_refusals_a_commit_never_frozen_for_and_disks_not_protected(world: World) -> None:
    w = world
    w.agent.on_settings({"bookmarks": [{"bookmark_id": BID, "tag": "group-app:x", "consistency": "app",
                                        "phase": "commit", "remaining_ms": 100}]})
    await until(lambda: w.reported("expired"))
    assert w.reported("expired")[0]["error"] == "the agent restarted" and w.rep.frozen_spans() == []
    w.rep.pipelines[1].state = "initial-replication"
    w.agent.on_settings({"bookmarks": [{"bookmark_id": "c2" * 16, "tag": "group-app:y", "consistency": "app",
                                        "phase": "prepare", "remaining_ms": 1000}]})
    await until(lambda: w.reported("failed"))
    assert w.reported("failed")[0]["error"] == "not protected yet: disk1" and w.rep.frozen_spans() == []
    rec = await w.agent.bookmark_now("crash")
    assert rec["outcome"] == "failed" and w.rep.tags == []
    w.rep.pipelines[1].state, w.rep.pipelines[1].mode = "protected", "bitmap"  # points of no accuracy
    rec = await w.agent.bookmark_now("app")
    assert rec["error"] == "not protected yet: disk1 (bitmap mode)" and w.rep.tags == []
    # malformed entries are ignored
    w.agent.on_settings({"bookmarks": [{"bookmark_id": "zz", "tag": "t", "phase": "prepare"}, {"phase": "x"}]})
    await asyncio.sleep(0.05)
    assert len(w.reports) == 2


@pytest.mark.timeout(20)
async def test_the_intervals_schedule_crash_and_app_consistent_tags(tmp_path: Path) -> None:
    async for w in make_world(tmp_path, crash_consistent_interval_s=0.1, app_consistent_interval_s=0.4,
                              **hooks(tmp_path)):
        await asyncio.sleep(1.3)
        kinds = [t.split(b":")[0] for t in w.rep.tags]
        assert 9 <= kinds.count(b"crash") <= 14, kinds
        assert 2 <= kinds.count(b"app") <= 4, kinds
        assert len(w.rep.frozen_spans()) == kinds.count(b"app")  # crash tags never freeze
        assert [line[0] for line in hook_log(tmp_path)][:4] == ["pre", "post", "pre", "post"]
        assert w.rep.writes_inside_freezes() == 0


async def test_freeze_guard_gives_up_at_its_timeout_and_releases_exactly_once() -> None:
    rep = FakeReplicator()
    await rep.lock.acquire()  # a long write holds the lock
    guard = FreezeGuard(rep)
    assert not await guard.acquire(0.05, hold_s=1)
    rep.lock.release()  # the write ends: the abandoned freeze must not keep the lock
    await asyncio.sleep(0.01)
    assert not rep.lock.locked()
    guard = FreezeGuard(rep)
    assert await guard.acquire(1, hold_s=0.1)
    await asyncio.sleep(0.2)  # the watchdog thawed
    assert not rep.lock.locked() and guard.by_watchdog
    assert not guard.release()  # and only once


async def test_run_hook_reports_a_missing_command(tmp_path: Path) -> None:
    result = await run_hook([str(tmp_path / "nope")], 1, {})
    assert not result.ok and result.error and "cannot run" in result.error
    result = await run_hook(["/bin/sh", "-c", "echo hi; exit 0"], 1, {})
    assert result.ok and result.output == "hi\n"


async def test_reports_are_retried_until_they_get_through(tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    async def flaky(bid: str, body: dict[str, Any]) -> dict[str, Any]:
        calls.append(body)
        if len(calls) < 3:
            raise errors.TransportError("CS unreachable")
        return {"ok": True, "phase": "commit" if body["state"] == "frozen" else None}

    rep = FakeReplicator()
    agent = BookmarkAgent(AgentConfig(data_dir=tmp_path, app_consistent_interval_s=0, crash_consistent_interval_s=0,
                                      retry_max_backoff_s=0.05), rep, flaky)
    agent.on_settings({"bookmarks": [{"bookmark_id": BID, "tag": "group-crash:r", "consistency": "crash",
                                      "phase": "prepare", "remaining_ms": 5000}]})
    await until(lambda: any(c["state"] == "tagged" for c in calls))
    # the reply to the (third) frozen report carried the decision: no settings document needed
    assert [c["state"] for c in calls] == ["frozen", "frozen", "frozen", "tagged"] and rep.tags == [b"group-crash:r"]
    await agent.stop()


def test_bookmark_config_is_checked() -> None:
    from common.config import ConfigError, from_dict

    cfg = from_dict(AgentConfig, {"pre_freeze_hook": ["/bin/true", "x"], "app_consistent_interval_s": "0"})
    assert cfg.pre_freeze_hook == ["/bin/true", "x"] and cfg.app_consistent_interval_s == 0
    for bad in ({"freeze_timeout_s": 0}, {"hook_timeout_s": -1}, {"crash_consistent_interval_s": -5},
                {"pre_freeze_hook": "/bin/true"}):
        with pytest.raises(ConfigError):
            from_dict(AgentConfig, bad)
