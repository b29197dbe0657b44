"""A full agent state directory (a small tmpfs): state.json keeps its last durable content and
the next save succeeds once space returns; the activity log takes its space when opened, so a
full disk never fails or tears a flush; a flush that fails anyway fails the workload write
waiting for it (nothing is tracked unlogged) and leaves the last good slot readable."""

from __future__ import annotations

import errno
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agentfakes import BlockClient

from agent import actlog as actlog_mod
from agent.actlog import ActivityLog
from agent.blockserver import BlockServer
from agent.disk import DiskImage
from agent.replication import Replicator
from agent.state import AgentState, DiskState, StateStore
from common import errors
from common.config import AgentConfig, DiskConfig
from common.wire import blockio as bio
from tests.sizedfs import fill, sized_dir

MiB = 1 << 20
DISKS = [(0, 16 * MiB), (1, 4 * MiB)]


def state(next_seq: int) -> AgentState:
    return AgentState(clean_shutdown=False, disks={"d0": DiskState("ab" * 16, "d0", generation=2, next_seq=next_seq)})


@pytest.mark.timeout(30)
def test_state_json_on_a_full_disk_keeps_the_last_durable_state(tmp_path: Path) -> None:
    with sized_dir(tmp_path, "64k") as data_dir:
        store = StateStore(data_dir)
        store.save(state(5))
        filler = fill(data_dir)
        big = state(6)
        big.disks.update({f"x{i}": DiskState("cd" * 16, f"x{i}") for i in range(200)})  # > one free page
        with pytest.raises(OSError) as info:
            store.save(big)
        assert info.value.errno == errno.ENOSPC
        assert sorted(p.name for p in data_dir.iterdir()) == ["filler", "state.json"]  # no temp file left
        assert StateStore(data_dir).load() == state(5)
        filler.unlink()
        store.save(big)  # not mistaken for already saved
        assert StateStore(data_dir).load() == big


@pytest.mark.timeout(30)
async def test_the_activity_log_flushes_on_a_full_disk_and_refuses_to_open_without_room(tmp_path: Path) -> None:
    with sized_dir(tmp_path, "256k") as data_dir:
        al = ActivityLog(data_dir / "actlog.bin", DISKS, MiB, linger_s=2.0)
        assert al.open() == {}
        fill(data_dir)
        for i in range(6):  # both slots, several times
            assert al.mark(0, i * MiB, 1)
            await al.ensure()
        al.close()
        again = ActivityLog(data_dir / "actlog.bin", DISKS, MiB, linger_s=2.0)
        assert again.open() == {0: [(0, 6 * MiB)], 1: []}
        again.close()
        other = ActivityLog(data_dir / "other.bin", DISKS, MiB, linger_s=2.0)
        with pytest.raises(OSError) as info:  # the agent does not start without its log
            other.open()
        assert info.value.errno == errno.ENOSPC
        other.close()


@pytest.mark.timeout(30)
async def test_short_writes_are_continued_and_a_failed_flush_keeps_the_good_slot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "actlog.bin"
    al = ActivityLog(path, DISKS, MiB, linger_s=2.0)
    al.open()
    real = os.pwrite
    monkeypatch.setattr(actlog_mod.os, "pwrite", lambda fd, data, off: real(fd, bytes(data)[:100], off))
    al.mark(0, 0, 1)
    await al.ensure()  # written 100 bytes at a time
    monkeypatch.setattr(actlog_mod.os, "pwrite", real)
    al.mark(0, 3 * MiB, 1)
    await al.ensure()
    good = {0: [(0, MiB), (3 * MiB, MiB)], 1: []}

    def torn(fd: int, data: Any, off: int) -> int:  # the slot's first bytes, then the disk is full
        real(fd, bytes(data)[:20], off)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(actlog_mod.os, "pwrite", torn)
    for _ in range(2):  # retried in the same slot, never over the good one
        al.mark(0, 9 * MiB, 1)
        with pytest.raises(OSError):
            await al.ensure()
        assert al.dirty
    probe = ActivityLog(path, DISKS, MiB, linger_s=2.0)
    assert probe.open() == good
    probe.close()
    monkeypatch.setattr(actlog_mod.os, "pwrite", real)
    await al.ensure()
    al.close()
    again = ActivityLog(path, DISKS, MiB, linger_s=2.0)
    assert again.open() == {0: [(0, MiB), (3 * MiB, MiB), (9 * MiB, MiB)], 1: []}
    again.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Replicator, ActivityLog, BlockClient]]:
    size = 4 * MiB
    cfg = AgentConfig(data_dir=tmp_path, socket_path=tmp_path / "a.sock", backlog_max_bytes=size,
                      disks=[DiskConfig("d0", tmp_path / "d0.img", size)])
    disks = [DiskImage(d.path, d.size_bytes, d.name) for d in cfg.disks]
    al = ActivityLog(tmp_path / "actlog.bin", [(0, size)], MiB, linger_s=2.0)
    al.open()
    rep = Replicator(cfg, disks, ssl.create_default_context(), actlog=al)
    rep.protected.add(0)
    server = BlockServer(cfg.socket_path, disks, rep.write)
    await server.start()
    client = await BlockClient.connect(cfg.socket_path)
    try:
        yield rep, al, client
    finally:
        await client.close()
        await server.stop()
        await rep.stop()
        al.close()
        for d in disks:
            d.close()


@pytest.mark.timeout(30)
async def test_a_write_whose_activity_log_flush_fails_is_refused_and_not_tracked(
        served: tuple[Replicator, ActivityLog, BlockClient], monkeypatch: pytest.MonkeyPatch) -> None:
    rep, al, client = served
    assert (await client.write(0, 1, 0, b"a"))[0].status == bio.Status.OK

    def full(fd: int, data: Any, off: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(actlog_mod.os, "pwrite", full)
    resp, msg = await client.write(0, 2, 2 * MiB, b"b")  # a cold extent: must be logged first
    assert resp.status == bio.Status.ERROR and b"I/O error" in msg
    assert rep.tracker.last_wnum == 1  # not tracked, not written
    assert (await client.read(0, 2 * MiB, 1))[1] == b"\0"
    monkeypatch.undo()
    assert (await client.write(0, 2, 2 * MiB, b"b"))[0].status == bio.Status.OK  # the retry goes through
    assert rep.tracker.last_wnum == 2 and al.extents(0) == [(0, MiB), (2 * MiB, MiB)] and not al.dirty


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cut", [0, 1, 10, -2, -1])
def test_a_torn_state_json_is_refused_clearly_never_guessed(tmp_path: Path, cut: int) -> None:
    """state.json is replaced atomically, so only a broken disk tears it: the agent refuses to
    start with a clear error (what to do) rather than guessing generations."""
    StateStore(tmp_path).save(state(5))
    raw = (tmp_path / "state.json").read_bytes()
    (tmp_path / "state.json").write_bytes(raw[:cut] + (b"\0\xff" if cut in (0, 10) else b""))
    with pytest.raises(errors.ConfigError, match="is damaged.*move it away"):
        StateStore(tmp_path).load()
