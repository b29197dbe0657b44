"""The benchmark's two child processes, each pinned to its own CPU when there are two.

- :func:`cs_main`: initialise a CS in a fresh data dir (as the tests do: ``init_cs`` then
  ``CSService`` on 127.0.0.1, port 0), report its URL and pid, serve until told to stop, then
  send what its :class:`StallProbe` saw (event-loop stalls and GC pauses, with their times).
- :func:`generator_main`: register the simulated fleet, open one keep-alive mutual-TLS connection
  per component, run the phases, check that every component's heartbeat reached the database,
  and send back the figures (with the CS process's CPU time per phase).

Both talk to the parent over a ``multiprocessing`` pipe with small dicts; no secret travels (the
generator reads the passphrase file itself).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

from bench import fleet, loadgen

PHASES = ("ping", "heartbeat")
LIST_PAGE = 100


def pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------------------- the CS


def cs_main(pipe: Pipe, data_dir: str, db_url: str, cpu: int | None) -> None:
    pin(cpu)
    asyncio.run(_serve(pipe, Path(data_dir), db_url))


async def _serve(pipe: Pipe, data_dir: Path, db_url: str) -> None:
    from common import logging as dlog
    from common.config import CSConfig
    from cs.init import init_cs
    from cs.service import CSService

    dlog.setup("cs", log_file=data_dir / "cs.log")
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:
            handler.setLevel(logging.WARNING)  # the console stays quiet; the JSON log file has it all
    cfg = CSConfig(data_dir=data_dir / "cs", listen_host="127.0.0.1", port=0, db_url=db_url)
    await init_cs(cfg, hosts=["127.0.0.1", "localhost"])
    service = CSService(cfg)
    await service.start()
    stalls = StallProbe()
    stalls.start()
    try:
        pipe.send({"url": service.url, "pid": os.getpid(), "data_dir": str(cfg.data_dir)})
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # any message: stop
    finally:
        stalls.stop()
        await service.stop()
    pipe.send({"loop_stalls": stalls.lags, "gc_pauses": stalls.gc_pauses})


class StallProbe:
    """What holds the CS's event loop (a tick every ``TICK_S`` arrives more than ``STALL_S``
    late) and how long the garbage collector pauses it (full collections, or any over 5 ms):
    ``[(wall-clock time, seconds)]``. The tail of the latency comes from such stalls."""

    TICK_S = 0.005
    STALL_S = 0.02
    GC_PAUSE_S = 0.005

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self.lags: list[tuple[float, float]] = []
        self.gc_pauses: list[tuple[float, float]] = []
        self._gc_t0 = 0.0

    def start(self) -> None:
        gc.callbacks.append(self._gc)
        self._task = asyncio.get_running_loop().create_task(self._tick(), name="bench-stall-probe")

    def stop(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self._task is not None:
            self._task.cancel()

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_t0
        if info.get("generation") == 2 or took > self.GC_PAUSE_S:
            self.gc_pauses.append((time.time(), took))

    async def _tick(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.TICK_S)
            late = time.perf_counter() - t0 - self.TICK_S
            if late > self.STALL_S:
                self.lags.append((time.time(), late))


def stall_summary(window: list[float], lags: list[tuple[float, float]], pauses: list[tuple[float, float]]
                  ) -> dict[str, Any]:
    """The stalls and GC pauses of the CS that fell in a phase's ``[start, end]`` (pure)."""
    start, end = window
    ls = [d for t, d in lags if start <= t <= end]
    gs = [d for t, d in pauses if start <= t <= end]
    return {"loop_stalls_over_20ms": len(ls), "loop_stall_max_ms": round(1000 * max(ls, default=0.0), 1),
            "loop_stalled_ms": round(1000 * sum(ls), 1), "gc_pauses": len(gs),
            "gc_pause_max_ms": round(1000 * max(gs, default=0.0), 1)}


# -------------------------------------------------------------------------- the generator


def generator_main(pipe: Pipe, spec: dict[str, Any], cpu: int | None) -> None:
    pin(cpu)
    try:
        result = asyncio.run(_generate(spec))
    except Exception as exc:  # reported to the parent, which fails the run
        result = {"error": f"{type(exc).__name__}: {exc}"}
    pipe.send(result)


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    from common import auth, tls
    from common.http import ApiClient

    cs_dir = Path(spec["cs_data_dir"])
    passphrase = auth.read_passphrase_file(str(cs_dir / "passphrase.txt"))
    t0 = time.perf_counter()
    members = await fleet.register_fleet(spec["url"], passphrase, fleet.role_mix(spec["components"]),
                                         Path(spec["fleet_dir"]))
    registration_s = time.perf_counter() - t0
    host, port = spec["url"].removeprefix("https://").rsplit(":", 1)
    conns = [loadgen.Connection(host, int(port), m.ssl_context()) for m in members]
    t0 = time.perf_counter()
    await loadgen.open_all(conns)
    connect_s = time.perf_counter() - t0
    phases: dict[str, Any] = {}
    try:
        for name in spec["phases"]:
            requests = [loadgen.Template(_request(name, host, m, i)) for i, m in enumerate(members)]
            phase = loadgen.Phase(name, requests, spec["duration_s"], spec["warmup_s"], spec["concurrency"])
            cpu0, own0, w0 = cpu_seconds(spec["cs_pid"]), cpu_seconds(os.getpid()), time.perf_counter()
            began = time.time() + phase.warmup_s
            phases[name] = await loadgen.run_phase(conns, phase)
            phases[name]["window"] = [began, began + phase.duration_s]
            cpu1, own1, w1 = cpu_seconds(spec["cs_pid"]), cpu_seconds(os.getpid()), time.perf_counter()
            phases[name]["cs_cpu_pct"] = round(100.0 * (cpu1 - cpu0) / (w1 - w0), 1)
            done = phases[name]["requests"] * (w1 - w0) / phase.duration_s  # ~ requests over the CPU window
            phases[name]["cs_cpu_us_per_request"] = round(1e6 * (cpu1 - cpu0) / done, 1) if done else 0.0
            phases[name]["generator_cpu_pct"] = round(100.0 * (own1 - own0) / (w1 - w0), 1)
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    admin = ApiClient(spec["url"], tls.client_context(tls.IdentityFiles(cs_dir / "admin")), timeout_s=60.0)
    try:
        heartbeated = await _heartbeated(admin)
    finally:
        await admin.close()
    return {"registration_s": round(registration_s, 2), "connect_s": round(connect_s, 2), "phases": phases,
            "components_heartbeated": heartbeated}


async def _heartbeated(admin: Any) -> int:
    """How many components the CS lists with a heartbeat (every page of ``/v1/components``)."""
    count, cursor = 0, None
    while True:
        params = {"limit": str(LIST_PAGE), **({"cursor": cursor} if cursor else {})}
        reply = await admin.get("/v1/components", params=params)
        count += sum(1 for c in reply["items"] if c["last_heartbeat"] is not None)
        cursor = reply.get("next")
        if not cursor:
            return count


def _request(phase: str, host: str, member: fleet.Member, index: int) -> bytes:
    if phase == "ping":
        return loadgen.build_request("GET", "/v1/ping", host, None)
    metrics = dict(fleet.metrics_for(member.role, index), beat=loadgen.COUNTER.decode())
    body = {"metrics": metrics, "time_ns": time.time_ns()}
    return loadgen.build_request("POST", "/v1/heartbeat", host, body)
