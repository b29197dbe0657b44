"""The transactional store used as the app-consistent workload (agent/txstore.py): its own
consistency check fails on images cut inside a transaction, recovery (redo) repairs every
crash-consistent image, and a quiesced store always passes; the hook CLI quiesces a running store."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import pytest

from agent import txstore
from agent.txstore import BLOCK, ControlServer, Layout, TxStore, check, recover


class MemoryDisk:
    """A BlockClient stand-in: remembers every write, in order, to rebuild any prefix of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.writes: list[tuple[int, int, bytes]] = []  # (wnum, offset, data)
        self.gate: asyncio.Event | None = None

    async def write(self, disk_index: int, wnum: int, offset: int, data: bytes) -> None:
        assert disk_index == 0 and (not self.writes or wnum > self.writes[-1][0])
        if self.gate is not None:
            await self.gate.wait()
        self.writes.append((wnum, offset, bytes(data)))

    def image(self, upto: int | None = None) -> bytes:
        img = bytearray(self.size)
        for _, off, data in self.writes[:upto]:
            img[off:off + len(data)] = data
        return bytes(img)


def store_on(disk: MemoryDisk, seed: int, accounts: int = 8, log_blocks: int = 4) -> TxStore:
    return TxStore(disk, Layout(accounts, log_blocks, accounts * 1000), seed=seed)  # type: ignore[arg-type]


async def test_every_crash_image_recovers_and_mid_transaction_images_fail_the_raw_check(seed: int) -> None:
    disk = MemoryDisk(64 * BLOCK)
    store = store_on(disk, seed)
    await store.format()
    formatted = len(disk.writes)
    rng = random.Random(seed)
    for _ in range(30):  # the log (4 blocks) wraps many times
        a, b = rng.sample(range(8), 2)
        await store.transfer(a, b, rng.randrange(1, 500))
    assert check(disk.image()) == []  # quiesced: consistent as it is
    raw_failures = 0
    for n in range(formatted, len(disk.writes) + 1):
        image = disk.image(n)
        problems = check(image)
        quiesced = (n - formatted) % 3 == 0  # every transaction is 3 writes: log, page, page
        assert (problems == []) == quiesced, (n, problems)
        raw_failures += bool(problems)
        assert check(recover(image)) == [], (n, check(recover(image)))
    assert raw_failures == 60  # two cut points inside each of the 30 transactions
    assert check(disk.image(formatted - 1)) == ["no valid superblock"]  # the store does not exist yet


def test_the_check_names_what_is_wrong() -> None:
    layout = Layout(4, 2, 4000)
    img = bytearray(8 * BLOCK)
    img[0:BLOCK] = txstore.encode_super(layout)
    for k in range(4):
        img[layout.page_offset(k):layout.page_offset(k) + BLOCK] = txstore.encode_page(k, 0, 1000)
    assert check(bytes(img)) == []
    # a page written without its commit record (the write-ahead rule broken)
    bad = bytearray(img)
    bad[layout.page_offset(1):layout.page_offset(1) + BLOCK] = txstore.encode_page(1, 5, 900)
    assert "page 1 holds tx 5 whose commit record is missing" in check(bytes(bad))
    # a committed record whose pages are not there; recovery applies it
    bad = bytearray(img)
    bad[layout.log_offset(1):layout.log_offset(1) + BLOCK] = txstore.encode_record(1, [(0, 900), (3, 1100)])
    assert check(bytes(bad)) == ["tx 1 committed but not applied to key 0 (page holds tx 0)",
                                 "tx 1 committed but not applied to key 3 (page holds tx 0)"]
    assert check(recover(bytes(bad))) == []
    # a torn page and a broken balance
    bad = bytearray(img)
    bad[layout.page_offset(2) + 10] ^= 0xFF
    assert check(bytes(bad)) == ["page 2: bad page"]
    bad = bytearray(img)
    bad[layout.page_offset(2):layout.page_offset(2) + BLOCK] = txstore.encode_page(2, 0, 999)
    assert check(bytes(bad)) == ["balances add up to 3999, not 4000"]


@pytest.mark.timeout(30)
async def test_the_hook_command_quiesces_a_running_store_and_thaws_it(tmp_path: Path, seed: int) -> None:
    disk = MemoryDisk(64 * BLOCK)
    store = store_on(disk, seed)
    await store.format()
    control = ControlServer(tmp_path / "tx.sock", store)
    await control.start()
    stop = asyncio.Event()
    running = asyncio.create_task(store.run(stop, duration_s=20, pause_s=0.001))
    try:
        await asyncio.sleep(0.05)
        disk.gate = asyncio.Event()  # the next write waits: a transaction is in flight
        await asyncio.sleep(0.01)
        hook = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.txstore", "hook", "--control",
                                                    str(tmp_path / "tx.sock"), "freeze")
        await asyncio.sleep(0.3)
        assert hook.returncode is None  # freeze waits for the transaction in flight
        disk.gate.set()
        assert await asyncio.wait_for(hook.wait(), 10) == 0
        held = len(disk.writes)
        assert check(disk.image()) == []  # quiesced: the image as it is now is consistent
        await asyncio.sleep(0.2)
        assert len(disk.writes) == held  # no transaction while quiesced
        thaw = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.txstore", "hook", "--control",
                                                    str(tmp_path / "tx.sock"), "thaw")
        assert await asyncio.wait_for(thaw.wait(), 10) == 0
        await asyncio.sleep(0.2)
        assert len(disk.writes) > held
        bad = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.txstore", "hook", "--control",
                                                   str(tmp_path / "nosock"), "freeze",
                                                   stderr=asyncio.subprocess.DEVNULL)
        assert await asyncio.wait_for(bad.wait(), 10) == 1
    finally:
        stop.set()
        await running
        await control.stop()
    assert store.stats.quiesces == 1 and check(disk.image()) == []
