"""A protected disk's local write that fails part-way (ENOSPC, EIO after a short write): the
writer gets an error and its wnum stays unused, yet the range is tracked, so the next batch sends
exactly what the source disk now holds there (a METADATA / APPROXIMATE batch: those bytes are
no acknowledged write's). A write that fails before any byte reached the disk changes nothing."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agentfakes import BlockClient, FakePS, issue, replay

from agent import disk as disk_mod
from agent.blockserver import BlockServer
from agent.disk import DiskImage, TornWrite
from agent.replication import Replicator
from agent.tracker import Tracker, TrackMode
from common import tls
from common.config import AgentConfig, DiskConfig
from common.wire import batch as wb
from common.wire import blockio as bio
from tests.sizedfs import fill, sized_dir

KiB, MiB = 1 << 10, 1 << 20
DISK_ID = "ab" * 16


@dataclass
class Lab:
    rep: Replicator
    ps: FakePS
    client: BlockClient
    disk: DiskImage

    async def sent(self) -> list[wb.ChangeBatch]:
        """Cut now, wait until the PS has every batch; all batches the PS received."""
        self.rep.cut_now()
        assert await self.rep.pipelines[0].uploader.drain(10)
        return self.ps.received(DISK_ID, 1)

    def source(self) -> bytes:
        return self.disk.pread(0, self.disk.size_bytes)


async def _lab(tmp_path: Path, image_dir: Path, size: int) -> AsyncIterator[Lab]:
    ps = FakePS()
    url = await ps.start(issue(tmp_path / "ps", "11" * 16, "ps"))
    agent_files = issue(tmp_path / "agent", "22" * 16, "agent")
    cfg = AgentConfig(data_dir=tmp_path, socket_path=tmp_path / "a.sock",
                      disks=[DiskConfig("d0", image_dir / "d0.img", size)])
    disk = DiskImage(image_dir / "d0.img", size, "d0")
    rep = Replicator(cfg, [disk], tls.client_context(agent_files))
    rep.open(0, disk_id=DISK_ID, generation=1, ps_url=url, resync_from=None)  # data mode, empty replica
    server = BlockServer(cfg.socket_path, [disk], rep.write)
    await server.start()
    client = await BlockClient.connect(cfg.socket_path)
    try:
        yield Lab(rep, ps, client, disk)
    finally:
        await client.close()
        await server.stop()
        await rep.stop()
        await ps.stop()
        disk.close()


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async for item in _lab(tmp_path, tmp_path, 4 * MiB):
        yield item


def _failing_pwrite(monkeypatch: pytest.MonkeyPatch, keep: int) -> list[int]:
    """Make the disk's next writes put ``keep`` bytes on the disk, then fail with ENOSPC."""
    real, calls = os.pwrite, []

    def torn(fd: int, data: Any, off: int) -> int:
        calls.append(off)
        if len(calls) == 1 and keep:
            return real(fd, bytes(data)[:keep], off)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(disk_mod.os, "pwrite", torn)
    return calls


@pytest.mark.timeout(30)
async def test_a_write_torn_half_way_fails_and_the_next_batch_sends_what_the_source_holds(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await lab.client.write(0, 1, 0, b"a" * 8 * KiB))[0].status == bio.Status.OK
    first = await lab.sent()
    assert [b.accuracy for b in first] == [wb.Accuracy.EXACT]
    _failing_pwrite(monkeypatch, keep=4 * KiB)
    resp, msg = await lab.client.write(0, 2, 4 * KiB, b"x" * 8 * KiB)
    monkeypatch.undo()
    assert resp.status == bio.Status.ERROR and b"I/O error" in msg and b"No space left" in msg
    assert lab.rep.tracker.last_wnum == 1  # not acknowledged: the wnum stays free for a retry
    source = lab.source()
    assert source[:12 * KiB] == b"a" * 4 * KiB + b"x" * 4 * KiB + b"\0" * 4 * KiB  # half of it landed
    batches = await lab.sent()
    torn = batches[-1]
    assert len(batches) == 2 and (torn.mode, torn.accuracy) == (wb.Mode.METADATA, wb.Accuracy.APPROXIMATE)
    assert torn.wnum_hi == 1 and [(r.offset, len(r.data)) for r in torn.records] == [(4 * KiB, 8 * KiB)]
    assert replay(batches, lab.disk.size_bytes) == source  # the replica knows the torn bytes
    assert (await lab.client.write(0, 2, 4 * KiB, b"y" * 8 * KiB))[0].status == bio.Status.OK  # the retry
    batches = await lab.sent()
    assert batches[-1].accuracy == wb.Accuracy.EXACT and batches[-1].wnum_hi == 2
    assert replay(batches, lab.disk.size_bytes) == lab.source()


@pytest.mark.timeout(30)
async def test_a_write_that_fails_before_any_byte_landed_changes_nothing(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await lab.client.write(0, 1, 0, b"a" * 4 * KiB))[0].status == bio.Status.OK
    before = await lab.sent()
    calls = _failing_pwrite(monkeypatch, keep=0)
    resp, msg = await lab.client.write(0, 2, 0, b"x" * 4 * KiB)
    monkeypatch.undo()
    assert calls == [0] and resp.status == bio.Status.ERROR and b"I/O error" in msg
    assert lab.rep.tracker.last_wnum == 1 and not lab.rep.tracker.has_pending(0)
    assert lab.rep.cut_now() == 0 and lab.ps.received(DISK_ID, 1) == before  # no batch: nothing changed
    assert lab.source()[:8 * KiB] == b"a" * 4 * KiB + b"\0" * 4 * KiB
    assert lab.disk.bytes_written == 4 * KiB


@pytest.mark.timeout(60)
async def test_a_real_full_disk_tears_a_write_and_the_replica_still_matches_the_source(tmp_path: Path) -> None:
    with sized_dir(tmp_path, "512k") as image_dir:
        async for lab in _lab(tmp_path, image_dir, 2 * MiB):  # a sparse image larger than its filesystem
            assert (await lab.client.write(0, 1, 0, b"a" * 64 * KiB))[0].status == bio.Status.OK
            fill(image_dir, keep_bytes=16 * KiB)
            resp, msg = await lab.client.write(0, 2, MiB, os.urandom(128 * KiB))  # into holes: ENOSPC part-way
            assert resp.status == bio.Status.ERROR and b"No space left" in msg, msg
            assert lab.rep.tracker.last_wnum == 1
            source = lab.source()
            assert any(source[MiB:MiB + 128 * KiB])  # some of the failed write is on the source disk
            batches = await lab.sent()
            assert batches[-1].accuracy == wb.Accuracy.APPROXIMATE
            assert replay(batches, lab.disk.size_bytes) == source


def test_the_tracker_reads_a_torn_range_back_in_every_mode() -> None:
    disk = bytearray(b"t" * 64 * KiB)

    def read(off: int, n: int) -> bytes:
        return bytes(disk[off:off + n])
    for mode in TrackMode:
        tr = Tracker(last_wnum=7, block_bytes=4 * KiB)
        tr.watch(0, len(disk))
        tr.set_mode(0, mode)
        assert tr.record_torn(0, 5 * KiB, 6 * KiB, 1) and tr.busy(0, 8 * KiB, 1)
        assert not tr.record_torn(1, 0, 4 * KiB, 1)  # a disk not watched: nothing to track
        cut = tr.cut(0, 2, read)
        assert cut is not None and cut.wnum_hi == 7 and tr.last_wnum == 7
        assert cut.mode is (TrackMode.METADATA if mode is TrackMode.DATA else mode)
        covered = {o for r in cut.records for o in range(r.offset, r.offset + len(r.data))}
        assert set(range(5 * KiB, 11 * KiB)) <= covered
        assert all(r.data == read(r.offset, len(r.data)) for r in cut.records)


def test_a_torn_write_error_keeps_its_errno() -> None:
    exc = TornWrite(OSError(errno.EIO, "Input/output error"), 512)
    assert isinstance(exc, OSError) and exc.errno == errno.EIO and exc.done == 512 and "after 512 bytes" in str(exc)
