"""The workload generator: seeded writes through the agent, each acknowledged one logged.

    python -m agent.workload [run] (--socket PATH | --nbd nbd://HOST:PORT/NAME) --log FILE [--seed N]
        --rate-mb-s 10 --duration-s 20
        [--disks 0,1] [--write-sizes 4096:0.5,65536:0.4,1048576:0.1] [--overwrite-share 0.7]
        [--profile mixed] [--hot-region-mib 64] [--start-wnum auto] [--json]
    python -m agent.workload prefill --image PATH --disk-index 0 --size-bytes N --fraction 0.5
        --log FILE [--seed N] [--profile mixed]

The write log (common/wire/writelog) is shared by prefill and runs of one machine; write
numbers continue from its highest. A record is appended only after the agent acknowledged
the write, so the log is the oracle's truth (common/oracle). With ``--nbd`` the writes go to an NBD
export instead (common/nbdclient.py: e.g. an MT's failover view), logged as disk ``--disks`` (one
index, default 0); write numbers are then the workload's own. The data of write w is
``datagen.data_for(seed, w, length, profile)``; the seed is the log's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.blockclient import BlockClient
from common import datagen
from common import logging as dlog
from common.errors import ConfigError, DrlabError
from common.nbdclient import NbdBlockClient
from common.wire import writelog as wl

log = dlog.get("drlab.agent.workload")

PAGE = 4096
DISK_ERROR = "I/O error"  # how the agent's block server begins its answer to a failed disk write
MiB = 1 << 20
DEFAULT_SIZES: list[tuple[int, float]] = [(4096, 0.5), (65536, 0.4), (MiB, 0.1)]


@dataclass
class WorkloadParams:
    socket_path: Path
    log_path: Path
    seed: int | None = None  # None: the log's seed, or a fresh random one for a new log
    rate_mb_s: float = 10.0  # 0: as fast as the agent acknowledges
    duration_s: float = 20.0
    disks: list[int] | None = None  # None: every disk the agent reports
    write_sizes: list[tuple[int, float]] = field(default_factory=lambda: list(DEFAULT_SIZES))
    overwrite_share: float = 0.7
    profile: str = "mixed"
    hot_region_mib: float = 64.0
    start_wnum: int | None = None  # None: the log's highest wnum + 1
    max_writes: int | None = None
    timeout_s: float = 30.0
    nbd_url: str | None = None  # write to this NBD export (as disk ``disks[0]``, default 0), not the agent


@dataclass
class WorkloadStats:
    seed: int
    writes: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    mb_s: float = 0.0
    first_wnum: int = 0
    last_wnum: int = 0
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def parse_sizes(text: str) -> list[tuple[int, float]]:
    """``4096:0.5,65536:0.4`` -> [(4096, 0.5), (65536, 0.4)]; sizes are multiples of 4 KiB."""
    out: list[tuple[int, float]] = []
    for item in text.split(","):
        size_s, _, weight_s = item.partition(":")
        try:
            size, weight = int(size_s), float(weight_s or 1)
        except ValueError as exc:
            raise ConfigError(f"bad write size {item!r}: {exc}") from exc
        if size <= 0 or size % PAGE or weight < 0:
            raise ConfigError(f"write size {size} must be a positive multiple of {PAGE}, weight >= 0")
        out.append((size, weight))
    if not out or sum(w for _, w in out) <= 0:
        raise ConfigError("write sizes need a positive total weight")
    return out


class TokenBucket:
    """Paces bytes to ``rate`` per second with bursts up to ``burst_s`` of rate (debt allowed)."""

    def __init__(self, rate: float, burst_s: float = 0.05) -> None:
        self.rate = rate
        self.cap = rate * burst_s
        self.tokens = self.cap
        self._last = time.monotonic()

    def take(self, n: int, now: float | None = None) -> float:
        """Spend ``n`` tokens; returns the seconds to wait before the spend is paid off."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        self.tokens = min(self.cap, self.tokens + (now - self._last) * self.rate)
        self._last = now
        self.tokens -= n
        return max(0.0, -self.tokens / self.rate)


@dataclass(frozen=True)
class PlannedWrite:
    disk: int
    offset: int
    length: int


class Planner:
    """Pure: chooses each write's disk, size and 4 KiB-aligned offset from a seeded rng."""

    def __init__(self, rng: random.Random, disk_sizes: dict[int, int], sizes: list[tuple[int, float]],
                 overwrite_share: float, hot_bytes: int) -> None:
        self.rng, self.disk_sizes, self.disks = rng, disk_sizes, sorted(disk_sizes)
        self.sizes, self.weights = [s for s, _ in sizes], [w for _, w in sizes]
        self.overwrite_share, self.hot_bytes = overwrite_share, hot_bytes

    def next(self) -> PlannedWrite:
        disk = self.rng.choice(self.disks)
        disk_size = self.disk_sizes[disk]
        length = min(self.rng.choices(self.sizes, self.weights)[0], disk_size - disk_size % PAGE)
        region = disk_size
        if self.rng.random() < self.overwrite_share:
            region = max(length, min(disk_size, self.hot_bytes))
        slots = (region - length) // PAGE + 1
        return PlannedWrite(disk, self.rng.randrange(slots) * PAGE, length)


def _resolve_seed(log_path: Path, seed: int | None) -> int:
    header = wl.read_log(log_path)[0] if log_path.exists() else None
    if header is not None:
        return header.seed if seed is None else seed  # a different seed is refused by LogWriter
    return random.randrange(1, 2**63) if seed is None else seed


async def _disk_sizes(client: BlockClient | NbdBlockClient, wanted: list[int] | None) -> dict[int, int]:
    sizes = {int(d["index"]): int(d["size_bytes"]) for d in await client.info()}
    chosen = sorted(sizes) if wanted is None else wanted
    missing = [d for d in chosen if d not in sizes]
    if missing or not chosen:
        raise ConfigError(f"disks {missing or chosen} not among the agent's {sorted(sizes)}")
    small = [d for d in chosen if sizes[d] < PAGE]
    if small:
        raise ConfigError(f"disks {small} are smaller than {PAGE} bytes")
    return {d: sizes[d] for d in chosen}


async def _pause(delay: float, stop: asyncio.Event) -> None:
    if delay > 0:
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass


async def run_workload(params: WorkloadParams, *, stop: asyncio.Event | None = None) -> WorkloadStats:
    """Write through the agent until ``duration_s``, ``max_writes`` or ``stop``; never raises
    for a failed write (the stats carry the error) — only for bad parameters."""
    stop = stop or asyncio.Event()
    seed = _resolve_seed(params.log_path, params.seed)
    prof = datagen.profile(params.profile)
    stats = WorkloadStats(seed=seed)
    with wl.LogWriter(params.log_path, seed, prof) as writer:
        wnum = writer.last_wnum + 1
        if params.start_wnum is not None:
            if params.start_wnum < wnum:
                raise ConfigError(f"start wnum {params.start_wnum} is not above the log's {writer.last_wnum}")
            wnum = params.start_wnum
        log.info("workload starting", seed=seed, first_wnum=wnum, rate_mb_s=params.rate_mb_s)
        client = (NbdBlockClient(params.nbd_url, (params.disks or [0])[0], timeout_s=params.timeout_s)
                  if params.nbd_url else BlockClient(params.socket_path, timeout_s=params.timeout_s))
        async with client:
            sizes = await _disk_sizes(client, params.disks)
            rng = random.Random(f"drlab-workload:{seed}:{wnum}")
            planner = Planner(rng, sizes, params.write_sizes, params.overwrite_share,
                              int(params.hot_region_mib * MiB))
            stats.first_wnum = wnum
            await _loop(params, client, writer, planner, stats, wnum, prof, stop)
    return stats


async def _loop(params: WorkloadParams, client: BlockClient | NbdBlockClient, writer: wl.LogWriter, planner: Planner,
                stats: WorkloadStats, wnum: int, prof: datagen.Profile, stop: asyncio.Event) -> None:
    bucket = TokenBucket(params.rate_mb_s * 1e6)
    started = time.monotonic()
    deadline = started + params.duration_s
    while not stop.is_set() and time.monotonic() < deadline:
        if params.max_writes is not None and stats.writes >= params.max_writes:
            break
        plan = planner.next()
        await _pause(min(bucket.take(plan.length), deadline - time.monotonic()), stop)
        if stop.is_set() or time.monotonic() >= deadline:
            break
        data = datagen.data_for(stats.seed, wnum, plan.length, prof)
        try:
            await client.write(plan.disk, wnum, plan.offset, data)
        except DrlabError as exc:
            stats.error = f"write {wnum} failed: {exc.message}"
            log.error("workload write failed", wnum=wnum, error=exc.message)
            if exc.retriable or exc.message.startswith(DISK_ERROR):  # the connection broke, or the agent's
                # disk write failed (part of it may be on the disk: agent/disk.py TornWrite): in doubt
                writer.append(wl.LogRecord(wnum, plan.disk, wl.KIND_DOUBT, plan.offset, plan.length, time.time_ns()))
            break
        writer.append(wl.LogRecord(wnum, plan.disk, wl.KIND_WRITE, plan.offset, plan.length, time.time_ns()))
        stats.writes, stats.bytes, stats.last_wnum = stats.writes + 1, stats.bytes + plan.length, wnum
        wnum += 1
    stats.duration_s = time.monotonic() - started
    stats.mb_s = stats.bytes / 1e6 / stats.duration_s if stats.duration_s > 0 else 0.0


def prefill(image: Path, disk_index: int, size_bytes: int, fraction: float, log_path: Path,
            seed: int | None = None, *, profile: str = "mixed", chunk_bytes: int = MiB) -> int:
    """Write ``fraction`` of the disk's chunks straight into its image (before the agent protects
    it), logging each as a prefill record; returns the log's last wnum."""
    if not 0.0 <= fraction <= 1.0 or size_bytes <= 0 or chunk_bytes <= 0 or chunk_bytes % PAGE:
        raise ConfigError("prefill needs 0 <= fraction <= 1, size_bytes > 0, chunk a multiple of 4 KiB")
    seed = _resolve_seed(Path(log_path), seed)
    prof = datagen.profile(profile)
    nchunks = -(-size_bytes // chunk_bytes)
    chosen = sorted(random.Random(f"drlab-prefill:{seed}:{disk_index}").sample(range(nchunks),
                                                                               round(fraction * nchunks)))
    with wl.LogWriter(Path(log_path), seed, prof) as writer:
        fd = _open_image(Path(image), size_bytes)
        try:
            wnum = writer.last_wnum
            for chunk in chosen:
                wnum += 1
                offset = chunk * chunk_bytes
                length = min(chunk_bytes, size_bytes - offset)
                _pwrite_all(fd, datagen.data_for(seed, wnum, length, prof), offset)
                writer.append(wl.LogRecord(wnum, disk_index, wl.KIND_PREFILL, offset, length, time.time_ns()))
        finally:
            os.close(fd)
        return writer.last_wnum


def _open_image(path: Path, size_bytes: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    size = os.fstat(fd).st_size
    if size > size_bytes:
        os.close(fd)
        raise ConfigError(f"{path} is {size} bytes, larger than the disk's {size_bytes}")
    if size < size_bytes:
        os.ftruncate(fd, size_bytes)
    return fd


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent.workload", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="write through the agent's socket (the default)")
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument("--socket", type=Path)
    target.add_argument("--nbd", default=None, help="nbd://HOST:PORT/NAME: write to this NBD export instead")
    run.add_argument("--rate-mb-s", type=float, default=10.0, help="target MB/s (10^6 bytes); 0 = unpaced")
    run.add_argument("--duration-s", type=float, default=20.0)
    run.add_argument("--disks", default=None, help="comma-separated disk indexes (default: all)")
    run.add_argument("--write-sizes", type=parse_sizes, default=list(DEFAULT_SIZES))
    run.add_argument("--overwrite-share", type=float, default=0.7)
    run.add_argument("--hot-region-mib", type=float, default=64.0)
    run.add_argument("--start-wnum", default="auto")
    run.add_argument("--max-writes", type=int, default=None)
    run.add_argument("--timeout-s", type=float, default=30.0)
    run.add_argument("--json", action="store_true", help="print the final stats as one JSON line")
    pre = sub.add_parser("prefill", help="fill a disk image directly, before protection")
    pre.add_argument("--image", required=True, type=Path)
    pre.add_argument("--disk-index", type=int, default=0)
    pre.add_argument("--size-bytes", type=int, required=True)
    pre.add_argument("--fraction", type=float, default=0.5)
    for sp in (run, pre):
        sp.add_argument("--log", required=True, type=Path)
        sp.add_argument("--seed", type=int, default=None)
        sp.add_argument("--profile", choices=sorted(datagen.PROFILE_IDS), default="mixed")
    return p


async def _run_cli(args: argparse.Namespace) -> WorkloadStats:
    params = WorkloadParams(
        socket_path=args.socket or Path(), nbd_url=args.nbd, log_path=args.log, seed=_resolve_seed(args.log, args.seed),
        rate_mb_s=args.rate_mb_s, duration_s=args.duration_s,
        disks=[int(d) for d in args.disks.split(",")] if args.disks else None,
        write_sizes=args.write_sizes, overwrite_share=args.overwrite_share, profile=args.profile,
        hot_region_mib=args.hot_region_mib, max_writes=args.max_writes, timeout_s=args.timeout_s,
        start_wnum=None if args.start_wnum == "auto" else int(args.start_wnum))
    print(f"workload: seed {params.seed}, log {params.log_path}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run_workload(params, stop=stop)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "prefill", "-h", "--help"):
        argv.insert(0, "run")
    args = _parser().parse_args(argv)
    dlog.setup("workload")
    try:
        if args.cmd == "prefill":
            seed = _resolve_seed(args.log, args.seed)
            print(f"prefill: seed {seed}, image {args.image}", file=sys.stderr, flush=True)
            last = prefill(args.image, args.disk_index, args.size_bytes, args.fraction, args.log, seed,
                           profile=args.profile)
            print(json.dumps({"seed": seed, "last_wnum": last}))
            return 0
        stats = asyncio.run(_run_cli(args))
    except DrlabError as exc:
        print(f"workload: {exc.message}", file=sys.stderr)
        return 2
    print(stats.to_json() if args.json else
          f"{stats.writes} writes, {stats.bytes / 1e6:.1f} MB in {stats.duration_s:.1f} s "
          f"({stats.mb_s:.1f} MB/s), wnums {stats.first_wnum}..{stats.last_wnum}, seed {stats.seed}")
    return 1 if stats.error else 0


if __name__ == "__main__":
    sys.exit(main())
