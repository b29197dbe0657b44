"""A workload with causal dependencies across two machines, and the check that no multi-machine
recovery point holds an effect without its cause.

    python -m agent.causal run --a-socket PATH --b-socket PATH --a-log FILE --b-log FILE
        [--slots 1024] [--duration-s 10] [--pause-ms 2] [--seed N] [--json]
    python -m agent.causal check --a-log FILE --b-log FILE --a-image IMG --b-image IMG

Machine A writes *causes*: cause i is one 4 KiB write to slot i (offset i * 4 KiB of A's disk 0).
Machine B writes *effect* i to slot i of its own disk 0 only after it has read cause i back from
A's disk through A's agent block socket. Every slot is written once. Both sides append each
acknowledged write to their machine's write log (common/wire/writelog, profile ``random``), so the
oracle can rebuild each image, and the data of slot i on either side is the logged write's.

:func:`check` takes one image of each machine (a multi-machine point: both failed over to the
same tag) and reports every effect present in B's image whose cause is absent from A's image.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.blockclient import BlockClient
from common import datagen
from common.errors import DrlabError
from common.wire import writelog as wl

SLOT = 4096
PROFILE = "random"  # never a zero page: a slot is written or it is zero
_ZERO = bytes(SLOT)
STOP_GRACE_S = 30.0  # longer than any freeze: a write held by one still lands


@dataclass
class CausalStats:
    causes: int = 0
    effects: int = 0
    reads: int = 0
    first_wnum_a: int = 0
    first_wnum_b: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class CausalCheck:
    causes: int = 0  # causes present in A's image
    effects: int = 0  # effects present in B's image
    violations: list[str] = field(default_factory=list)


def violations(causes: set[int], effects: set[int]) -> list[str]:
    """Pure rule: every effect present needs its cause present."""
    return [f"effect {i} is on B but its cause is not on A" for i in sorted(effects - causes)]


async def _cause_loop(client: BlockClient, log: wl.LogWriter, seed: int, slots: int, stop: asyncio.Event,
                      pause_s: float, stats: CausalStats) -> None:
    wnum = log.last_wnum + 1
    stats.first_wnum_a = wnum
    for i in range(slots):
        if stop.is_set():
            return
        await client.write(0, wnum, i * SLOT, datagen.data_for(seed, wnum, SLOT, PROFILE))
        log.append(wl.LogRecord(wnum, 0, wl.KIND_WRITE, i * SLOT, SLOT, time.time_ns()))
        stats.causes, wnum = stats.causes + 1, wnum + 1
        await asyncio.sleep(pause_s)


async def _effect_loop(reader_a: BlockClient, client_b: BlockClient, log: wl.LogWriter, seed: int, slots: int,
                       stop: asyncio.Event, poll_s: float, stats: CausalStats) -> None:
    wnum = log.last_wnum + 1
    stats.first_wnum_b = wnum
    for i in range(slots):
        while not stop.is_set():
            stats.reads += 1
            if await reader_a.read(0, i * SLOT, SLOT) != _ZERO:  # cause i is on A: B has seen it
                break
            await asyncio.sleep(poll_s)
        if stop.is_set():
            return
        await client_b.write(0, wnum, i * SLOT, datagen.data_for(seed, wnum, SLOT, PROFILE))
        log.append(wl.LogRecord(wnum, 0, wl.KIND_WRITE, i * SLOT, SLOT, time.time_ns()))
        stats.effects, wnum = stats.effects + 1, wnum + 1


async def run(a_socket: Path, b_socket: Path, a_log: Path, b_log: Path, *, seed: int, slots: int,
              duration_s: float, pause_s: float = 0.002, poll_s: float = 0.001,
              stop: asyncio.Event | None = None) -> CausalStats:
    """Causes on A and effects on B until ``duration_s``, ``slots`` effects, or ``stop``."""
    stop = stop or asyncio.Event()
    stats = CausalStats()
    started = time.monotonic()
    prof = datagen.profile(PROFILE)
    with wl.LogWriter(a_log, seed, prof) as log_a, wl.LogWriter(b_log, seed + 1, prof) as log_b:
        async with BlockClient(a_socket) as client_a, BlockClient(a_socket) as reader_a, \
                BlockClient(b_socket) as client_b:
            causes = _cause_loop(client_a, log_a, seed, slots, stop, pause_s, stats)
            effects = _effect_loop(reader_a, client_b, log_b, seed + 1, slots, stop, poll_s, stats)
            tasks = [asyncio.create_task(causes, name="causes"), asyncio.create_task(effects, name="effects")]
            timer = asyncio.create_task(_sleep_until(stop, duration_s), name="causal-timer")
            try:
                await asyncio.wait([*tasks, timer], return_when=asyncio.FIRST_EXCEPTION)
            finally:
                stop.set()  # the loops end after the write in flight (and its log record)
                await asyncio.wait([*tasks, timer], timeout=STOP_GRACE_S)
                for t in (*tasks, timer):
                    t.cancel()
                outcomes = await asyncio.gather(*tasks, timer, return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, DrlabError)]
    if failed:
        stats.error = failed[0].message
    elif any(isinstance(o, Exception) for o in outcomes):
        raise next(o for o in outcomes if isinstance(o, Exception))
    stats.seconds = time.monotonic() - started
    return stats


async def _sleep_until(stop: asyncio.Event, duration_s: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), duration_s)
    except TimeoutError:
        pass
    stop.set()


def _present(log_path: Path, image_path: Path) -> set[int]:
    """Slots of a side whose logged write is in the image (a slot holding anything else raises)."""
    header, records = wl.read_log(Path(log_path))
    if header is None:
        raise DrlabError(f"{log_path}: no write log")
    seed, prof = header.data_args()
    present = set()
    with open(image_path, "rb") as img:
        for rec in records:
            if rec.kind != wl.KIND_WRITE or rec.disk != 0:
                continue
            img.seek(rec.offset)
            block = img.read(SLOT)
            if block == datagen.data_for(seed, rec.wnum, SLOT, prof):
                present.add(rec.offset // SLOT)
            elif block.strip(b"\0"):
                raise DrlabError(f"{image_path}: slot {rec.offset // SLOT} holds neither write {rec.wnum} nor zeros")
    return present


def check(a_log: Path, b_log: Path, a_image: Path, b_image: Path) -> CausalCheck:
    causes, effects = _present(a_log, a_image), _present(b_log, b_image)
    return CausalCheck(len(causes), len(effects), violations(causes, effects))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent.causal", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--a-socket", required=True, type=Path)
    r.add_argument("--b-socket", required=True, type=Path)
    r.add_argument("--slots", type=int, default=1024)
    r.add_argument("--duration-s", type=float, default=10.0)
    r.add_argument("--pause-ms", type=float, default=2.0)
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--json", action="store_true")
    c = sub.add_parser("check")
    c.add_argument("--a-image", required=True, type=Path)
    c.add_argument("--b-image", required=True, type=Path)
    for sp in (r, c):
        sp.add_argument("--a-log", required=True, type=Path)
        sp.add_argument("--b-log", required=True, type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "check":
        result = check(args.a_log, args.b_log, args.a_image, args.b_image)
        print(json.dumps(asdict(result)))
        return 1 if result.violations else 0
    seed = args.seed if args.seed is not None else random.randrange(1, 2**62)
    if args.a_log.exists():
        seed = wl.read_header(args.a_log).seed  # a log keeps its seed
    print(f"causal: seed {seed}", file=sys.stderr, flush=True)
    stats = asyncio.run(run(args.a_socket, args.b_socket, args.a_log, args.b_log, seed=seed, slots=args.slots,
                            duration_s=args.duration_s, pause_s=args.pause_ms / 1000))
    print(json.dumps(asdict(stats)) if args.json else
          f"{stats.causes} causes, {stats.effects} effects in {stats.seconds:.1f} s ({stats.reads} reads)")
    return 1 if stats.error else 0


if __name__ == "__main__":
    sys.exit(main())
