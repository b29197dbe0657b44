"""The MT's failover views as NBD exports (mt/viewnbd.py): reads equal the view, writes land in its
overlay (and survive a reopen), a view that leaves the runner's views is no longer served and its
connections get errors, retire waits for requests in progress; the MTService wiring (config,
``nbd_url`` in the failover result, a view-drop job ends the export)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from mtbatches import DISK_SIZE, BatchMaker
from test_mt_service import DISK, World, wait_until, world  # noqa: F401  (the MT in-process)

from common.config import MTConfig, load
from common.errors import ConfigError
from common.nbdclient import NbdClient, NbdError
from common.wire import nbd as wn
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.service import MTService
from mt.view import DiskView
from mt.viewnbd import ViewNbd

VDISK = "5e" * 16
pytestmark = pytest.mark.timeout(60)


def replicated(tmp_path: Path, n: int = 6) -> tuple[DiskStore, BatchMaker]:
    maker = BatchMaker(bytes.fromhex(VDISK), seed=11)
    store = DiskStore(VDISK, tmp_path / "mt", Catalog(tmp_path / "mt" / "catalog.db"), DISK_SIZE, 30_000)
    store.open()
    for _ in range(n):
        assert store.receive(maker.gen, maker.seq + 1, maker.make())
        assert store.apply_next() is not None
    return store, maker


@dataclasses.dataclass
class Env:
    store: DiskStore
    maker: BatchMaker
    views: dict[str, DiskView]
    nbd: ViewNbd
    directory: Path


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store, maker = replicated(tmp_path)
    p3 = store.catalog.get(VDISK, 1, 3)
    assert p3 is not None
    directory = tmp_path / "views" / "fo"
    views = {"fo": DiskView.create(store, p3, directory)}
    executor = ThreadPoolExecutor(2)
    nbd = ViewNbd(lambda: views, executor, host="127.0.0.1", port=0)
    await nbd.start()
    try:
        yield Env(store, maker, views, nbd, directory)
    finally:
        await nbd.stop()
        for view in views.values():
            view.close()
        executor.shutdown()
        store.close()


async def test_reads_equal_the_view_and_writes_land_in_the_overlay_and_survive_a_reopen(env: Env, seed: int) -> None:
    rng = random.Random(seed)
    url = env.nbd.url("fo")
    assert url == f"nbd://127.0.0.1:{env.nbd.server.port}/fo"
    model = bytearray(env.maker.images[(1, 3)])
    async with NbdClient.from_url(url) as nbd:
        assert nbd.size_bytes == DISK_SIZE
        assert await nbd.read(0, DISK_SIZE) == bytes(model)
        for _ in range(20):
            offset, data = rng.randrange(DISK_SIZE - 70_000), rng.randbytes(rng.randrange(1, 70_000))
            await nbd.write(offset, data, fua=rng.random() < 0.3)
            model[offset:offset + len(data)] = data
        await nbd.write_zeroes(4096, 100_000)
        model[4096:104_096] = bytes(100_000)
        await nbd.flush()
        for _ in range(3):  # replication goes on under the view: the view does not move
            assert env.store.receive(env.maker.gen, env.maker.seq + 1, env.maker.make())
            assert env.store.apply_next() is not None
        assert await nbd.read(0, DISK_SIZE) == bytes(model)
        assert env.views["fo"].read(0, DISK_SIZE) == bytes(model)
    assert env.nbd.server.stats.flushes >= 1 and env.nbd.server.stats.refused == 0
    assert env.store.replica.read(0, DISK_SIZE) == env.maker.images[(1, 9)]  # the replica never saw them
    env.views.pop("fo").close()
    reopened = env.views["fo"] = DiskView.open(env.store, env.directory)  # served again, from its files
    assert reopened.read(0, DISK_SIZE) == bytes(model)
    async with NbdClient.from_url(url) as nbd:
        assert await nbd.read(0, DISK_SIZE) == bytes(model)


async def test_a_view_that_leaves_is_gone_and_its_connections_get_errors(env: Env) -> None:
    old = env.views["fo"]
    connected = NbdClient.from_url(env.nbd.url("fo"))
    await connected.connect()
    await connected.write(0, b"before")
    replaced = DiskView.create(env.store, old.point, env.directory.with_name("fo2"))
    env.views["fo"] = replaced  # as view-change does: another view under the same id
    await env.nbd.retire(old)
    old.drop()
    with pytest.raises(NbdError) as exc:
        await connected.read(0, 6)  # never the old view's bytes, nor a closed file's
    assert exc.value.errno == wn.Errno.EIO
    with pytest.raises(NbdError):
        await connected.write(0, b"after")
    async with NbdClient.from_url(env.nbd.url("fo")) as fresh:
        assert await fresh.read(0, 6) == env.maker.images[(1, 3)][:6]  # the new view: no overlay
    env.views.pop("fo")
    await env.nbd.retire(replaced)
    replaced.drop()
    with pytest.raises(NbdError, match="export refused"):
        await NbdClient.from_url(env.nbd.url("fo")).connect()
    await connected.close()


async def test_retire_waits_for_the_requests_in_progress(env: Env) -> None:
    view = env.views["fo"]
    entered, release = threading.Event(), threading.Event()
    real_read = view.read

    def slow_read(offset: int, length: int) -> bytes:
        entered.set()
        release.wait(10)
        return real_read(offset, length)

    view.read = slow_read  # type: ignore[method-assign]
    async with NbdClient.from_url(env.nbd.url("fo")) as nbd:
        pending = asyncio.create_task(nbd.read(0, 4096))
        await asyncio.to_thread(entered.wait, 10)
        del env.views["fo"]
        retiring = asyncio.create_task(env.nbd.retire(view))
        await asyncio.sleep(0.2)
        assert not retiring.done()  # the read is still in the executor
        release.set()
        await retiring
        assert await pending == env.maker.images[(1, 3)][:4096]  # begun before: answered
    view.close()


@pytest.mark.parametrize("settings", [["view_nbd_port=10809", "listen_host=10.1.2.3"],
                                      ["view_nbd_host=0.0.0.0"], ["view_nbd_port=10809", "view_nbd_host=::"],
                                      ["view_nbd_port=70000"]])
def test_a_non_loopback_view_export_is_refused(settings: list[str]) -> None:
    with pytest.raises(ConfigError):
        load(MTConfig, None, settings)


def test_view_export_config_defaults_off_and_takes_loopback() -> None:
    assert MTConfig().view_nbd_port == 0
    assert MTConfig(listen_host="10.1.2.3").view_nbd_port == 0  # off: the listen host does not matter
    cfg = load(MTConfig, None, ["view_nbd_port=10809", "listen_host=10.1.2.3", "view_nbd_host=127.0.3.2"])
    assert (cfg.view_nbd_port, cfg.view_nbd_host) == (10809, "127.0.3.2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def succeeded(w: World, job_id: str) -> dict[str, Any]:
    (reply,) = w.cs.results[job_id]
    assert reply["state"] == "succeeded", reply
    return dict(reply["result"])


async def test_the_mt_serves_its_failover_views_until_dropped(world: World) -> None:  # noqa: F811
    await world.mt.stop()
    world.cfg = dataclasses.replace(world.cfg, view_nbd_port=free_port())
    world.mt = MTService(world.cfg)
    await world.mt.start()
    await world.mt.wait_settings()
    for _ in range(3):
        assert (await world.send_next())[0] == 201
    store = world.mt.workers[DISK].store
    await wait_until(lambda: store.applied == (1, 3))
    jobs: list[dict[str, Any]] = [{"job_id": "fo", "kind": "failover", "disk_id": DISK, "point": {"gen": 1, "seq": 2}}]
    world.cs.publish(world.document(jobs=jobs))
    await wait_until(lambda: "fo" in world.cs.results)
    url = succeeded(world, "fo")["nbd_url"]
    assert url == f"nbd://127.0.0.1:{world.cfg.view_nbd_port}/fo"
    async with NbdClient.from_url(url) as nbd:
        assert await nbd.read(0, nbd.size_bytes) == world.maker.images[(1, 2)]
        await nbd.write(512, b"failed-over machine")
        jobs.append({"job_id": "drop", "kind": "view-drop", "disk_id": DISK, "point": {"view": "fo"}})
        world.cs.publish(world.document(jobs=jobs))
        await wait_until(lambda: "drop" in world.cs.results)
        assert succeeded(world, "drop")["dropped"] is True
        with pytest.raises(NbdError):
            await nbd.read(512, 19)
    with pytest.raises(NbdError, match="export refused"):
        await NbdClient.from_url(url).connect()
