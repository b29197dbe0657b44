"""The TCP fault proxy (deploy/faultproxy.py) with real sockets on loopback, port 0: an echo
server behind it, a client in front; every fault is observed from the client's side."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest

from common import errors
from deploy.faultproxy import FATES, Fate, FaultProxy, Faults, TokenBucket, delivery_time, plan_fate

HOST = "127.0.0.1"


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, HOST, 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


@pytest.fixture
async def proxy(echo_port: int, seed: int) -> AsyncIterator[FaultProxy]:
    p = FaultProxy(HOST, 0, HOST, echo_port, seed=seed)
    await p.start()
    yield p
    await p.close()


async def _connect(p: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, p.port)


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes,
                     timeout_s: float = 5.0) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout_s)


# -- pure core ---------------------------------------------------------------------------------


def test_fates_follow_the_probabilities_and_replay_by_seed(seed: int) -> None:
    faults = Faults(drop_p=0.2, reset_p=0.3, half_open_p=0.1, fault_window_s=1.5)
    fates = [plan_fate(faults, random.Random(seed + i)) for i in range(4000)]
    share = {k: sum(f.kind == k for f in fates) / len(fates) for k in FATES}
    assert abs(share["drop"] - 0.2) < 0.04 and abs(share["reset"] - 0.3) < 0.04
    assert abs(share["half_open"] - 0.1) < 0.04 and abs(share["none"] - 0.4) < 0.04
    assert all(0 <= f.after_s <= 1.5 and f.direction in ("up", "down") for f in fates)
    assert plan_fate(faults, random.Random(seed)) == fates[0]  # same seed, same fate
    assert {plan_fate(Faults(), random.Random(i)) for i in range(50)} == {Fate()}


@pytest.mark.parametrize("bad", [{"latency_s": -1}, {"bandwidth_bps": -5}, {"drop_p": -0.1},
                                 {"drop_p": 0.6, "reset_p": 0.5}, {"fault_window_s": -1}])
def test_bad_faults_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(errors.BadRequest):
        Faults(**bad)


def test_delivery_time_adds_latency_and_never_reorders() -> None:
    rng = random.Random(1)
    faults = Faults(latency_s=0.1, jitter_s=0.5)
    times, previous = [], 0.0
    for i in range(200):
        previous = delivery_time(i * 0.001, previous, faults, rng)
        times.append(previous)
        assert previous >= i * 0.001 + 0.1
    assert times == sorted(times)
    assert delivery_time(5.0, 0.0, Faults(), rng) == 5.0


def test_token_bucket_paces_to_its_rate() -> None:
    bucket = TokenBucket(rate=1_000_000.0)
    now, waited = 100.0, 0.0
    for _ in range(40):  # 40 chunks of 64 KiB at 1 MB/s: about 2.6 s minus one burst
        wait = bucket.take(65536, now)
        waited += wait
        now += wait
    assert 2.3 < waited < 2.7
    assert TokenBucket(rate=0).take(10**9, 1.0) == 0.0


# -- with sockets ------------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_clean_link_forwards_every_byte_in_order(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    data = random.randbytes(3 * 1024 * 1024)
    assert await _roundtrip(reader, writer, data) == data
    writer.close()
    assert proxy.stats.bytes == {"up": len(data), "down": len(data)}


@pytest.mark.timeout(20)
async def test_non_loopback_listen_is_refused() -> None:
    with pytest.raises(errors.BadRequest):
        FaultProxy("0.0.0.0", 0, HOST, 1)


@pytest.mark.timeout(20)
async def test_latency_and_bandwidth_slow_the_link_at_run_time(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    started = time.monotonic()
    await _roundtrip(reader, writer, b"x")
    assert time.monotonic() - started < 0.15
    proxy.set(latency_s=0.2)
    started = time.monotonic()
    await _roundtrip(reader, writer, b"y")
    assert time.monotonic() - started >= 0.4  # both directions
    proxy.set(latency_s=0.0, bandwidth_bps=400_000.0)
    started = time.monotonic()
    await _roundtrip(reader, writer, bytes(400_000))
    assert time.monotonic() - started >= 0.8  # about 1 s per direction minus the bursts
    writer.close()


@pytest.mark.timeout(20)
async def test_drop_closes_with_fin(proxy: FaultProxy) -> None:
    proxy.set(drop_p=1.0, fault_window_s=0.0)
    reader, writer = await _connect(proxy)
    assert await asyncio.wait_for(reader.read(10), 5) == b""  # EOF, no reset
    assert proxy.stats.fates["drop"] == 1 and proxy.stats.met["drop"] == 1
    writer.close()


@pytest.mark.timeout(20)
async def test_reset_closes_with_rst(proxy: FaultProxy) -> None:
    proxy.set(reset_p=1.0, fault_window_s=0.0)
    reader, writer = await _connect(proxy)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), 5)
        writer.write(b"more")
        await writer.drain()
        await asyncio.wait_for(reader.read(10), 5)
    writer.close()


@pytest.mark.timeout(20)
async def test_new_settings_reach_connections_already_open(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"fine") == b"fine"
    proxy.set(reset_p=1.0, fault_window_s=0.2)  # the network turns bad under a long-lived connection
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), 5)
    r2, w2 = await _connect(proxy)
    proxy.set(reset_p=0.0)  # and good again before the new one's fault came
    await asyncio.sleep(0.4)
    assert await _roundtrip(r2, w2, b"ok") == b"ok"
    writer.close()
    w2.close()


@pytest.mark.timeout(20)
async def test_strike_hits_every_open_connection_now(proxy: FaultProxy) -> None:
    conns = [await _connect(proxy) for _ in range(3)]
    for r, w in conns:
        assert await _roundtrip(r, w, b"hi") == b"hi"
    assert proxy.strike("drop") == 3
    for r, _ in conns:
        assert await asyncio.wait_for(r.read(10), 5) == b""
    assert proxy.stats.met == {"drop": 3, "reset": 0, "half_open": 0}
    with pytest.raises(errors.BadRequest):
        proxy.strike("melt")
    for _, w in conns:
        w.close()


@pytest.mark.timeout(20)
async def test_half_open_stops_one_direction_and_keeps_the_socket(proxy: FaultProxy) -> None:
    proxy.set(half_open_p=1.0, fault_window_s=0.3)
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"before") == b"before"  # the fault is 0..0.3 s away
    await asyncio.sleep(0.4)
    writer.write(b"after")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(10), 1.0)  # no echo, and no EOF or reset either
    assert not writer.is_closing() and proxy.open_connections == 1
    writer.close()


@pytest.mark.timeout(20)
async def test_blackhole_partition_stalls_old_and_new_connections_until_healed(proxy: FaultProxy) -> None:
    old_r, old_w = await _connect(proxy)
    assert await _roundtrip(old_r, old_w, b"a") == b"a"
    proxy.partition("blackhole")
    with pytest.raises(TimeoutError):
        await _roundtrip(old_r, old_w, b"b", timeout_s=0.8)
    new_r, new_w = await _connect(proxy)  # accepted, but nothing goes through
    with pytest.raises(TimeoutError):
        await _roundtrip(new_r, new_w, b"c", timeout_s=0.5)
    proxy.heal()
    assert await asyncio.wait_for(old_r.readexactly(1), 5) == b"b"  # held bytes resume
    assert await asyncio.wait_for(new_r.readexactly(1), 5) == b"c"
    assert await _roundtrip(old_r, old_w, b"d") == b"d"
    old_w.close()
    new_w.close()


@pytest.mark.timeout(20)
async def test_refuse_partition_resets_old_and_new_connections_until_healed(proxy: FaultProxy) -> None:
    old_r, old_w = await _connect(proxy)
    assert await _roundtrip(old_r, old_w, b"a") == b"a"
    proxy.partition("refuse")
    with pytest.raises(ConnectionResetError):
        await _roundtrip(old_r, old_w, b"b")
    new_r, new_w = await _connect(proxy)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await _roundtrip(new_r, new_w, b"c")
    assert proxy.stats.refused == 1
    with pytest.raises(errors.BadRequest):
        proxy.partition("sideways")
    proxy.heal()
    r, w = await _connect(proxy)
    assert await _roundtrip(r, w, b"e") == b"e"
    for wr in (old_w, new_w, w):
        wr.close()


@pytest.mark.timeout(20)
async def test_target_down_resets_the_client(seed: int) -> None:
    server = await asyncio.start_server(_echo, HOST, 0)
    dead_port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    p = FaultProxy(HOST, 0, HOST, dead_port, seed=seed)
    await p.start()
    try:
        reader, writer = await _connect(p)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
    finally:
        await p.close()
