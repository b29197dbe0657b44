"""RTO: from the failover command to a writable, verified view, on 1, 4 and 16 GiB sparse disks.

``python -m bench.rto [--quick] [--seed N]`` (issue 8, point 4; ``make bench`` runs it via bench/all.py).

Per disk size, a complete MT disk (``mt.apply.DiskStore``: replica, undo journal, recovery-point
catalog — the very apply path a PS's batches take) is fed a long journal directly: ``batches``
change batches of random writes spread over the whole disk, whose timestamps are *accelerated*
(the batches' ``t_first_ns`` / ``t_last_ns``, which the agent stamps and the MT only records,
step ``span_h`` hours over the run, written in seconds — no clock hook is needed). Every write is
logged in a workload write log (common/wire/writelog.py) so the oracle can rebuild any point.

Then the MT's job runner (``mt.jobs.JobRunner``, with its NBD server of views, mt/viewnbd.py, on
127.0.0.1) runs a ``failover`` job to ``latest`` and to ``{"time_ns": T}`` with T 1 % into the
journal (every batch after it rolled back by the view), as the CS sends it by default: no image
file, the job done once the view is made. Measured for each, from the job's start (what the MT
does when the CS's job reaches it) to: the job's result, then a 4 KiB block read, written into
the view over NBD, flushed and read back — the failed-over machine's first I/O. Then, untimed
for the RTO: the write is undone, the view exported as it is (a ``view-image`` job, timed) and
the export checked byte for byte by the oracle (must pass); the view dropped. *With image*
times the same failover asking for its image file (``image: true``: the job before issue 8's
change, whose ``DiskView.materialize`` took ~99 % of it).

The CS leg (the admin's ``POST`` failover, the settings long-poll that hands the job to the MT,
the result's ``POST`` back and the admin's ``wait_job`` poll, 0.2 s apart) is measured once in a
process lab (bench/rto_lab.py) and added: *command -> writable* = MT writable + CS leg; the target
is judged on it.

Same-run references, on the same replica: ``cp --sparse=always`` of the replica file (a full
copy of the disk, the floor for any copy-based failover) and ``mt.failover.make_image`` (the old
full-copy failover: sparse copy + roll back) to the far point. Target (issue 8): failover to
latest ready in <= 1 s, the same for 1, 4 and 16 GiB.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from bench import rto_lab
from bench.results_io import machine, publish
from common import datagen, oracle
from common import logging as dlog
from common.http import ApiClient
from common.nbdclient import NbdClient
from common.wire import batch as wbatch
from common.wire.writelog import KIND_PREFILL, KIND_WRITE, LogRecord, LogWriter
from mt import seed as seed_mod
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.failover import make_image
from mt.jobs import JobRunner
from mt.settings import Job
from mt.viewnbd import ViewNbd
from mt.worker import DiskWorker

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 1 << 30
DISK = "a7" * 16
PAGE = 4096
LENGTHS = (4096, 16384, 65536)  # bytes per write, chosen at random
PROFILE = "random"  # datagen profile of the writes (cheap to regenerate for the oracle)
SEGMENT_BYTES = 64 << 20  # journal segment size (the MT's default order of magnitude)
T0_NS = 1_790_000_000 * 10**9  # accelerated clock: the journal's first batch
FAR_FRACTION = 0.01  # the far point: this far into the journal
TARGET_S = 1.0
PREFILL_CHUNK = 4 << 20


@dataclass(frozen=True)
class Params:
    sizes_gib: tuple[int, ...]
    batches: int
    writes_per_batch: int
    span_h: float  # recovery-point time the journal covers (accelerated)
    prefill_mib: int  # data on the disk before the journal (the same at every size)

    @classmethod
    def of(cls, quick: bool) -> Params:
        if quick:
            return cls((1,), 120, 4, 1.0, 32)
        return cls((1, 4, 16), 1500, 4, 6.0, 256)


# ---------------------------------------------------------------- the journal


def prefill(replica_path: Path, log: LogWriter, p: Params, size: int, seed: int) -> int:
    """The disk's data before protection (as seeding leaves it in the replica, mt/seed.py):
    ``p.prefill_mib`` in 4 MiB chunks spread evenly over the disk, logged as prefill writes.
    Written before the store opens; returns the last wnum."""
    prof = datagen.profile(PROFILE)
    chunks = p.prefill_mib // 4
    stride = size // chunks // PREFILL_CHUNK * PREFILL_CHUNK
    fd = os.open(replica_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, size)
        for wnum in range(1, chunks + 1):
            offset = (wnum - 1) * stride
            os.pwrite(fd, datagen.data_for(seed, wnum, PREFILL_CHUNK, prof), offset)
            log.append(LogRecord(wnum, 0, KIND_PREFILL, offset, PREFILL_CHUNK, T0_NS))
        os.fsync(fd)
    finally:
        os.close(fd)
    return chunks


def build_journal(store: DiskStore, log: LogWriter, wnum: int, p: Params, size: int, seed: int) -> dict[str, Any]:
    """Apply ``p.batches`` batches of random writes over the whole disk (write numbers after
    ``wnum``), timestamps spread over ``p.span_h`` hours; every write logged for the oracle.
    Returns the journal's facts."""
    prof = datagen.profile(PROFILE)
    rng = random.Random(seed)
    step_ns = int(p.span_h * 3600 * 10**9 / p.batches)
    written = 0
    t0 = time.perf_counter()
    for seq in range(1, p.batches + 1):
        t_batch = T0_NS + seq * step_ns
        records = []
        first = wnum + 1
        for i in range(p.writes_per_batch):
            length = rng.choice(LENGTHS)
            offset = rng.randrange(0, (size - length) // PAGE) * PAGE
            wnum += 1
            records.append(wbatch.Record(offset, datagen.data_for(seed, wnum, length, prof)))
            log.append(LogRecord(wnum, 0, KIND_WRITE, offset, length, t_batch + i))
            written += length
        batch = wbatch.ChangeBatch(bytes.fromhex(DISK), 1, seq, first, wnum, t_batch, t_batch + p.writes_per_batch - 1,
                                   wbatch.Mode.DATA, wbatch.Accuracy.EXACT, 0, [], records)
        store.apply_batch(batch, t_batch + step_ns // 2, None)
    segments = store.journal.segments()
    return {"batches": p.batches, "writes": p.batches * p.writes_per_batch, "bytes_written": written,
            "build_s": round(time.perf_counter() - t0, 3),
            "span_h": p.span_h, "journal_segments": len(segments),
            "journal_bytes": sum(store.journal.size_of(s) for s in segments),
            "replica_allocated_bytes": os.stat(store.replica.path).st_blocks * 512}


def far_time_ns(p: Params) -> int:
    step_ns = int(p.span_h * 3600 * 10**9 / p.batches)
    return T0_NS + max(2, int(p.batches * FAR_FRACTION)) * step_ns + p.writes_per_batch  # after that batch's writes


# ---------------------------------------------------------------- failover through the MT's job runner


class _NoCS:
    """The runner's CS client: never called here (results are posted by ``JobRunner._run`` only)."""

    async def post(self, path: str, body: Any) -> Any:
        raise AssertionError(f"unexpected CS call {path}")


async def failover_case(runner: JobRunner, job_id: str, spec: Any, size: int, log_path: Path,
                        rng: random.Random) -> dict[str, Any]:
    """One failover job as the CS sends it by default (no image: done once the view is made), then
    the machine's first I/O over NBD; then, untimed, that I/O undone, the view exported as it is
    (a ``view-image`` job) and the export checked by the oracle; the view dropped. Then the same
    failover asking for its image file (``image: true``, the old job), timed, for reference."""
    t0 = time.perf_counter()
    result = await runner.execute(Job(job_id, "failover", DISK, spec))
    job_s = time.perf_counter() - t0
    read_back_ok, undo = await first_io(str(result["nbd_url"]), size, rng)
    writable_s = time.perf_counter() - t0
    unasked = runner.data_dir / "failover" / DISK / f"{job_id}.img"
    no_image = "image_path" not in result and not await asyncio.to_thread(unasked.exists)
    await undo()
    t1 = time.perf_counter()
    export = await runner.execute(Job(f"{job_id}-export", "view-image", DISK, {"view": job_id}))
    export_s = time.perf_counter() - t1
    image = Path(export["image_path"])
    wnum_hi = int(result["point"]["wnum_hi"])
    verdict = await asyncio.to_thread(oracle.verify, log_path, 0, size, wnum_hi, image)
    await runner.execute(Job(f"{job_id}-drop", "view-drop", DISK, {"view": job_id}))
    await asyncio.to_thread(image.unlink, missing_ok=True)
    with_image = await image_job_s(runner, f"{job_id}-image", spec)
    view = result["view"]
    return {"name": job_id, "point": spec, "gen_seq": [result["point"]["gen"], result["point"]["seq"]],
            "wnum_hi": wnum_hi,
            "undo_records": view["undo_records"], "undo_extents": view["undo_extents"],
            "view_ready_s": view["ready_s"], "job_s": round(job_s, 4), "writable_s": round(writable_s, 4),
            "write_read_back_ok": read_back_ok, "no_image_file": no_image, "export_s": round(export_s, 4),
            "oracle_ok": verdict.ok, "oracle_detail": verdict.detail, "oracle_s": round(verdict.seconds, 3),
            **with_image, "target_met": writable_s <= TARGET_S}  # with the CS leg: run()


async def image_job_s(runner: JobRunner, job_id: str, spec: Any) -> dict[str, Any]:
    """The failover job with ``image: true`` (view + its sparse image file): its seconds; then the
    view is dropped and the image removed."""
    t0 = time.perf_counter()
    result = await runner.execute(Job(job_id, "failover", DISK, spec, image=True))
    seconds = time.perf_counter() - t0
    await runner.execute(Job(f"{job_id}-drop", "view-drop", DISK, {"view": job_id}))
    image = Path(result["image_path"])
    made = await asyncio.to_thread(image.is_file)
    await asyncio.to_thread(image.unlink, missing_ok=True)
    return {"image_job_s": round(seconds, 4), "image_s": result["view"]["image_s"], "image_made": made}


async def first_io(url: str, size: int, rng: random.Random) -> tuple[bool, Callable[[], Awaitable[None]]]:
    """The failed-over machine's first I/O over NBD: a 4 KiB read, write, flush, read back. Returns
    (read back equal, how to undo the write: the old block written back, for the oracle)."""
    offset = rng.randrange(0, size // PAGE) * PAGE
    block = rng.randbytes(PAGE)
    async with NbdClient.from_url(url) as nbd:
        old = await nbd.read(offset, PAGE)
        await nbd.write(offset, block)
        await nbd.flush()
        ok = await nbd.read(offset, PAGE) == block

    async def undo() -> None:
        async with NbdClient.from_url(url) as again:
            await again.write(offset, old)
            await again.flush()

    return ok, undo


async def failovers(store: DiskStore, work: Path, size: int, log_path: Path, p: Params,
                    seed: int) -> dict[str, Any]:
    executor = ThreadPoolExecutor(4, thread_name_prefix="rto-mt")
    worker = DiskWorker(store, executor)
    runner = JobRunner(work / "mtdata", lambda d: worker if d == DISK else None, executor,
                       lambda: cast(ApiClient, _NoCS()))
    runner.nbd = ViewNbd(lambda: runner.views, executor, host="127.0.0.1", port=0)
    await runner.nbd.start()
    rng = random.Random(seed + 1)
    try:
        latest = await failover_case(runner, "rto-latest", "latest", size, log_path, rng)
        far = await failover_case(runner, "rto-far", {"time_ns": far_time_ns(p)}, size, log_path, rng)
    finally:
        await runner.stop()
        await runner.nbd.stop()
        executor.shutdown(wait=True)
    return {"latest": latest, "far": far}


# ---------------------------------------------------------------- references


def cp_sparse_s(src: Path, dest: Path) -> float:
    """``cp --sparse=always`` of the replica, synced to disk (a failover by full copy)."""
    t0 = time.perf_counter()
    subprocess.run(["cp", "--sparse=always", str(src), str(dest)], check=True)
    subprocess.run(["sync", str(dest)], check=True)
    seconds = time.perf_counter() - t0
    dest.unlink()
    return seconds


def make_image_s(store: DiskStore, spec_time_ns: int, dest: Path) -> float:
    """The old full-copy failover (mt/failover.py ``make_image``) to the far point."""
    point = store.catalog.at_time(DISK, spec_time_ns)
    assert point is not None
    t0 = time.perf_counter()
    make_image(store, point, dest)
    seconds = time.perf_counter() - t0
    dest.unlink()
    return seconds


# ---------------------------------------------------------------- one size, the whole run


def run_size(gib: int, p: Params, seed: int, root: Path) -> dict[str, Any]:
    work = root / f"{gib}gib"
    work.mkdir()
    size = gib * GIB
    log_path = work / "writes.log"
    log = LogWriter(log_path, seed, datagen.profile(PROFILE))
    replica = seed_mod.replica_file(work / "mtdata", DISK)
    replica.parent.mkdir(parents=True)
    wnum = prefill(replica, log, p, size, seed)
    store = DiskStore(DISK, work / "mtdata", Catalog(work / "mtdata" / "catalog.db"), size, SEGMENT_BYTES)
    store.open()
    try:
        journal = build_journal(store, log, wnum, p, size, seed)
        cases = asyncio.run(failovers(store, work, size, log_path, p, seed))
        cp_s = cp_sparse_s(store.replica.path, work / "cp.img")
        image_s = make_image_s(store, far_time_ns(p), work / "make_image.img")
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    refs = {"cp_sparse_s": round(cp_s, 4), "make_image_far_s": round(image_s, 4)}
    ratios = {"latest_to_cp": round(cases["latest"]["writable_s"] / cp_s, 4),
              "far_to_cp": round(cases["far"]["writable_s"] / cp_s, 4),
              "far_to_make_image": round(cases["far"]["writable_s"] / image_s, 4)}
    return {"size_gib": gib, "journal": journal, "cases": cases, "references": refs, "ratios": ratios}


def run(quick: bool, seed: int) -> tuple[dict[str, Any], str]:
    """The benchmark (module docstring): its JSON-able report and markdown section."""
    p = Params.of(quick)
    root = Path(tempfile.mkdtemp(prefix="drlab-bench-rto-"))
    try:
        (root / "lab").mkdir()
        cs = asyncio.run(rto_lab.cs_leg(root / "lab", seed))
        sizes = [run_size(gib, p, seed, root) for gib in p.sizes_gib]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for case in (c for s in sizes for c in s["cases"].values()):
        case["command_to_writable_s"] = round(case["writable_s"] + cs["cs_leg_median_s"], 4)
        case["target_met"] = case["command_to_writable_s"] <= TARGET_S
    latest = [s["cases"]["latest"]["writable_s"] for s in sizes]
    rep = {"benchmark": "rto", "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "machine": machine(), "quick": quick, "seed": seed, "params": asdict(p), "target_s": TARGET_S,
           "cs_leg": cs, "sizes": sizes,
           "target_met": all(s["cases"]["latest"]["target_met"] for s in sizes),
           "oracle_ok": cs["oracle_ok"] and all(c["oracle_ok"] and c["write_read_back_ok"]
                                                 for s in sizes for c in s["cases"].values()),
           "latest_spread": round(max(latest) / min(latest), 3),
           "image_job_max_s": max(c["image_job_s"] for s in sizes for c in s["cases"].values())}
    rep["oracle_ok"] = rep["oracle_ok"] and all(c["no_image_file"] and c["image_made"] for s in sizes
                                                for c in s["cases"].values())
    return rep, markdown(rep)


def markdown(rep: dict[str, Any]) -> str:
    p, m, cs = rep["params"], rep["machine"], rep["cs_leg"]
    lines = ["### RTO: failover command to a writable, verified view",
             "",
             f"An MT disk ({p['prefill_mib']} MiB of data spread over it) fed {p['batches']} batches "
             f"({p['batches'] * p['writes_per_batch']} random writes over the whole disk, timestamps spanning "
             f"{p['span_h']:g} h, accelerated); the MT's job runner fails over (no image: the default) to latest "
             "and to a point 1 % into the journal, timed from the job's start to a 4 KiB read + write + read-back "
             "over the view's NBD export (*MT writable*); plus the CS leg measured in a process lab (command → job "
             "succeeded, minus the MT's part; median of "
             f"{len(cs['rounds'])}: {cs['cs_leg_median_s']:.3f} s) = *command → writable*. The oracle checks each "
             "view (exported by a `view-image` job once the write is undone); *with image* times the same failover "
             "asking for its image file (`image: true`). References on the same replica: `cp --sparse=always` and "
             f"the old full-copy `make_image`; ratios use MT writable ({rep['time_utc']}; {m['cpus']} CPUs, load "
             f"{m['loadavg_1m']}; seed {rep['seed']}).",
             "",
             "| disk | point | undo extents | view ready s | MT job s | MT writable s | **command → writable s** | "
             "≤ 1 s | with image: MT job s | export s | oracle s | verified | cp --sparse s | ratio | make_image s "
             "| ratio |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for s in rep["sizes"]:
        refs, ratios = s["references"], s["ratios"]
        for name, c in s["cases"].items():
            ok = "yes" if c["oracle_ok"] and c["write_read_back_ok"] and c["no_image_file"] else "NO"
            img, img_ratio = ((f"{refs['make_image_far_s']:.3f}", f"{ratios['far_to_make_image']:.3f}")
                              if name == "far" else ("", ""))
            lines.append(f"| {s['size_gib']} GiB | {name} | {c['undo_extents']} | {c['view_ready_s']:.4f} | "
                         f"{c['job_s']:.3f} | {c['writable_s']:.3f} | **{c['command_to_writable_s']:.3f}** | "
                         f"{'yes' if c['target_met'] else 'NO'} | {c['image_job_s']:.3f} | {c['export_s']:.3f} | "
                         f"{c['oracle_s']:.2f} | {ok} | {refs['cp_sparse_s']:.3f} | {ratios[name + '_to_cp']:.3f} | "
                         f"{img} | {img_ratio} |")
    lines += ["", f"Target (failover to latest ready in ≤ {rep['target_s']:g} s at every size): "
              f"**{'met' if rep['target_met'] else 'NOT met'}**; MT writable to latest, slowest/fastest across "
              f"sizes: {rep['latest_spread']:.2f}. *With image*: the job also writes the view's sparse image file "
              "(`DiskView.materialize`, O(data on the disk)) before it succeeds — slowest "
              f"{rep['image_job_max_s']:.3f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rto", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 GiB only, a short journal (< 60 s)")
    ap.add_argument("--seed", type=int, default=0x5EED)
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and markdown go")
    args = ap.parse_args(argv)
    dlog.setup("bench", level=logging.WARNING)
    rep, md = run(args.quick, args.seed)
    publish(rep, md, args.out, "rto", "quick" if args.quick else "")
    return 0 if rep["oracle_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
