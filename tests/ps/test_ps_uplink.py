"""PS -> real MT over real TLS, through a real HTTP CONNECT proxy on loopback (tests/ps/psproxy.py)
and under a bandwidth limit, both set at run time by the settings document (ps/uplink.py):
uploads go through the proxy; a wrong proxy password stalls them with a logged error and they
resume when it is corrected; clearing the proxy goes direct again; no batch is lost or applied
twice. A 2 MB/s limit is honoured within 5 %, measured on the upload side."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from psbatches import make_batch
from psfakecs import FakeCS
from psproxy import ConnectProxy
from test_ps_to_mt import DISK, KEY, MT_ID, PS_ID, SIZE, World, issue, wait_until

from common import tls
from common.config import MTConfig, PSConfig
from common.http import ApiClient
from mt.service import MTService
from ps import uplink
from ps.service import PSService

USER, PASSWORD = "drlab-ps", "s3cret-proxy-pw"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """A stand-in CS and a real MT (as tests/ps/test_ps_to_mt.py's); the PS is started by each test."""
    ca = tls.make_ca()
    cs = FakeCS()
    cs_url = await cs.start(issue(ca, tmp_path / "cs", "cc" * 16, "cs", {}))
    common_cfg: dict[str, Any] = {"cs_url": cs_url, "heartbeat_interval_s": 0.5, "settings_wait_s": 1.0,
                                  "retry_max_backoff_s": 0.3, "request_timeout_s": 5.0}
    mt_cfg = MTConfig(data_dir=tmp_path / "mt", data_port=0, control_port=0, **common_cfg)
    issue(ca, mt_cfg.data_dir / "identity", MT_ID, "mt", {"component_id": MT_ID, "role": "mt", "cs_url": cs_url})
    cs.publish({"disks": [{"disk_id": DISK, "ps_id": PS_ID, "generation": 1, "size_bytes": SIZE, "key_epoch": 1,
                           "key_b64": base64.b64encode(KEY).decode()}], "jobs": []}, component_id=MT_ID)
    ps_cfg = PSConfig(data_dir=tmp_path / "ps", data_port=0, upload_window_batches=4, **common_cfg)
    issue(ca, ps_cfg.data_dir / "identity", PS_ID, "ps", {"component_id": PS_ID, "role": "ps", "cs_url": cs_url})
    agent = issue(ca, tmp_path / "agent", "a1" * 16, "agent", {})
    mt = MTService(mt_cfg)
    await mt.start()
    try:
        await mt.wait_settings()
        yield World(cs, mt, ps_cfg, tls.client_context(agent), bytearray(SIZE))
    finally:
        await mt.stop()
        await cs.stop()


async def send(world: World, ps: PSService, seqs: range, rng: random.Random, size: tuple[int, int] = (1, 8192)) -> int:
    """Batches from a stand-in agent; the data bytes they carry."""
    total = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=world.agent_ctx)) as session:
        for seq in seqs:
            n = rng.randrange(*size)
            offset, data = rng.randrange(0, SIZE - n), rng.randbytes(n)
            world.image[offset:offset + n] = data
            total += n
            url = f"https://127.0.0.1:{ps.data_port}/v1/disks/{DISK}/batches/1/{seq}"
            async with session.put(url, data=make_batch(DISK, 1, seq, offset=offset, data=data)) as resp:
                assert resp.status == 201, await resp.text()
    return total


def publish(world: World, upload: dict[str, Any] | None) -> None:
    world.cs.publish({**world.ps_document(), **({"upload": upload} if upload else {})}, component_id=PS_ID)


def applied(world: World, ps: PSService, n: int) -> bool:
    return ps.registry.progress_of(DISK).mt_of(1) == (n, n) and not world.cached()


async def test_proxy_set_wrong_password_corrected_and_cleared_at_run_time(world: World) -> None:
    rng = random.Random(4)
    proxy = ConnectProxy(USER, PASSWORD)
    await proxy.start()
    good = {"proxy": {"url": proxy.url, "username": USER, "password": PASSWORD}}
    publish(world, good)
    ps = PSService(world.ps_cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        sent = await send(world, ps, range(1, 11), rng)
        await wait_until(lambda: applied(world, ps, 10))
        assert proxy.tunnels > 0 and proxy.bytes_up > sent  # every upload went up the tunnel
        assert ps.metrics()["uplink"] == {"proxy": proxy.url, "proxy_error": None, "bytes_per_s": 0}

        with structlog.testing.capture_logs() as events:
            publish(world, {"proxy": {**good["proxy"], "password": "wrong"}})
            await ps.refresh_settings()
            sent += await send(world, ps, range(11, 21), rng)  # accepted and cached; uploads stall
            await wait_until(lambda: proxy.refused > 0 and ps.metrics()["uplink"]["proxy_error"] is not None)
            time_stalled = time.monotonic()
            await wait_until(lambda: time.monotonic() - time_stalled > 0.5)
            assert ps.registry.progress_of(DISK).mt_of(1) == (10, 10) and len(world.cached()) == 10
        failed = [e for e in events if e["event"] == "upload_proxy_failed"]
        assert failed and failed[0]["log_level"] == "error" and "407" in failed[0]["error"]
        assert len(failed) == 1  # once per failing spell, not once per retry
        assert PASSWORD not in repr(events) and "wrong" not in repr(events)  # no password in any log

        publish(world, good)  # corrected: the cached batches go, nothing dropped
        await ps.refresh_settings()
        await wait_until(lambda: applied(world, ps, 20))
        assert ps.metrics()["uplink"]["proxy_error"] is None

        tunnels = proxy.tunnels
        publish(world, None)  # cleared: direct again
        await ps.refresh_settings()
        sent += await send(world, ps, range(21, 31), rng)
        await wait_until(lambda: applied(world, ps, 30))
        assert proxy.tunnels == tunnels and ps.metrics()["uplink"]["proxy"] is None
        assert world.replica() == bytes(world.image)  # nothing lost ...
        assert world.mt.metrics()["disks"][DISK]["applied_bytes"] == sent  # ... nothing applied twice
    finally:
        await ps.stop()
        await proxy.stop()


async def test_static_upload_proxy_from_the_config(world: World, tmp_path: Path) -> None:
    rng = random.Random(5)
    proxy = ConnectProxy(USER, PASSWORD)
    await proxy.start()
    secret = tmp_path / "proxy.pw"
    secret.write_text(PASSWORD + "\n")
    cfg = PSConfig(**{**vars(world.ps_cfg), "upload_proxy": proxy.url, "upload_proxy_username": USER,
                      "upload_proxy_password_file": str(secret)})
    publish(world, None)
    ps = PSService(cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        await send(world, ps, range(1, 6), rng)
        await wait_until(lambda: applied(world, ps, 5))
        assert proxy.tunnels > 0 and PASSWORD not in repr(uplink.static_proxy(cfg))
        assert world.replica() == bytes(world.image)
    finally:
        await ps.stop()
        await proxy.stop()


class Recording(ApiClient):
    """The PS's client to the MT, recording when each successful batch upload started and its size."""

    puts: list[tuple[float, int]] = []

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        started = time.monotonic()
        reply = await super().request(method, path, **kw)
        if method == "PUT" and "/batches/" in path:
            Recording.puts.append((started, len(kw.get("data") or b"")))
        return reply


async def test_bandwidth_limit_is_honoured_within_five_percent(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    rate = 2_000_000
    monkeypatch.setattr("ps.service.ApiClient", Recording)
    Recording.puts = []
    rng = random.Random(6)
    world.cs.publish(world.ps_document(port=9), component_id=PS_ID)  # MT unreachable: the batches wait in the cache
    ps = PSService(world.ps_cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        await send(world, ps, range(1, 29), rng, size=(240_000, 260_000))  # ~7 MB
        publish(world, {"bandwidth": {"bytes_per_s": rate, "windows": []}})  # the MT and the limit, at run time
        await ps.refresh_settings()
        assert ps.metrics()["uplink"]["bytes_per_s"] == rate
        await wait_until(lambda: applied(world, ps, 28), timeout_s=30.0)
        puts = sorted(Recording.puts)
        assert len(puts) == 28
        # an upload starts once the bucket covers its bytes: the bytes after the first upload, over
        # the time from the first upload's start to the last one's (the upload side only)
        measured = sum(n for _, n in puts[1:]) / (puts[-1][0] - puts[0][0])
        assert measured == pytest.approx(rate, rel=0.05), measured
        assert world.replica() == bytes(world.image)

        publish(world, None)  # cleared at run time: no limit any more
        await ps.refresh_settings()
        assert ps.metrics()["uplink"]["bytes_per_s"] == 0
    finally:
        await ps.stop()
