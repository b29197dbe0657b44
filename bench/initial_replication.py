"""Initial replication and resync of one disk against same-run copies of the same image (issue 8).

``python -m bench.initial_replication [--quick] [--seed N]`` (``make bench`` runs it through bench/all.py).

One machine with one disk (4 GiB; ``--quick``: 256 MiB) in a lab of real daemons (deploy/lab.py:
CS, one PS, one MT, the agent, each its own process), the disk prefilled to half with the
``mixed`` profile (common/datagen.py, ~2:1 for lz4) in 1 MiB chunks at seeded places, the rest a
hole. Measured, in this order:

1. **References** on that image, into the MT's data directory (the filesystem the replica lives
   on): ``cp --sparse=always SRC DST && sync DST``, and ``nbdcopy --flush SRC DST`` (Debian's
   libnbd-bin; reported as absent when it is not installed). Each copy is deleted after it.
2. **Initial replication**: protection enabled through the CS until the disk is ``protected``
   (wall seconds, ``Scenario.protect``), MB/s of written data and of disk size, the ratio of
   its time to each reference's, and the CPU seconds each daemon spent (from /proc).
3. **Resync, nothing different** (the reference for the next): a resync asked through the CS
   right after initial replication (reason ``user``: a checksum resync that compares every
   block and sends none): what the compare alone costs.
4. **Resync, 1 % of the blocks different**: the agent stopped (SIGTERM, a clean stop); 1 % of the
   disk's 64 KiB blocks, chosen with the seed, overwritten in the image with new data and logged
   in the workload's write log (prefill records, so the oracle knows the image); the agent
   started again; a resync asked through the CS (reason ``user``: a checksum resync). The CS's
   resync record gives the bytes compared and sent and its seconds. The ideal bytes sent are the
   differing bytes; the agent compares ``hash_block_bytes`` blocks (64 KiB), so the best it can
   do is every hash block holding a differing block: both ratios are reported, and its time
   against initial replication's and the equal resync's.
5. **Oracle**: a few writes through the agent, then failover to the latest point; its image is
   checked byte for byte against the write log (common/oracle.py).

Everything runs in a temporary directory removed afterwards, and the lab is stopped, even on failure
(``DRLAB_BENCH_KEEP=1`` keeps the directory).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from bench.benchlab import by_role, cpu_delta, lab_cpu, new_lab
from bench.results_io import machine, publish
from common import datagen, errors
from common.config import AgentConfig
from common.wire import writelog
from deploy.lab import Lab
from deploy.scenario import Scenario, wait_state
from mt.replica import write_all

RESULTS = Path(__file__).resolve().parent / "results"
MiB = 1 << 20
FULL_MIB, QUICK_MIB = 4096, 256
FILL = 0.5
DIFF_BLOCK = 64 << 10
DIFF_SHARE = 0.01
PROFILE = "mixed"
TIMEOUT_S = 600.0


# ---------------------------------------------------------------- references


def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _timed(cmd: list[str], dst: Path) -> dict[str, Any]:
    """Run ``cmd`` (a copy to ``dst``), its wall seconds and what the copy allocated; ``dst`` deleted."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    seconds = time.perf_counter() - t0
    try:
        if proc.returncode != 0:
            raise errors.DrlabError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-1000:]}")
        return {"seconds": round(seconds, 3), "allocated_bytes": allocated_bytes(dst)}
    finally:
        dst.unlink(missing_ok=True)


def reference_copies(image: Path, dest_dir: Path) -> dict[str, Any]:
    """``cp --sparse=always`` then fsync of the copy, and ``nbdcopy --flush``; absent tools say so."""
    dst = dest_dir / "reference-copy.img"
    refs: dict[str, Any] = {}
    cp_cmd = ["sh", "-c", 'cp --sparse=always "$0" "$1" && sync "$1"', str(image), str(dst)]
    refs["cp"] = {"command": "cp --sparse=always SRC DST && sync DST", **_timed(cp_cmd, dst)}
    nbdcopy = shutil.which("nbdcopy")
    if nbdcopy is None:
        refs["nbdcopy"] = {"command": "nbdcopy --flush SRC DST", "absent": True}
    else:
        refs["nbdcopy"] = {"command": "nbdcopy --flush SRC DST", **_timed([nbdcopy, "--flush", str(image), str(dst)],
                                                                           dst)}
    return refs


# ---------------------------------------------------------------- the untracked change


def choose_blocks(size_bytes: int, seed: int, block: int = DIFF_BLOCK, share: float = DIFF_SHARE) -> list[int]:
    """Offsets of ``share`` of the disk's ``block``-sized blocks, spread at random with the seed."""
    nblocks = size_bytes // block
    count = max(1, round(nblocks * share))
    return sorted(b * block for b in random.Random(f"drlab-bench-resync:{seed}").sample(range(nblocks), count))


def hash_blocks(offsets: list[int], length: int, hash_block: int) -> int:
    """How many ``hash_block``-sized blocks the writes [offset, +length) touch."""
    return len({b for off in offsets for b in range(off // hash_block, (off + length - 1) // hash_block + 1)})


def write_untracked(image: Path, log_path: Path, offsets: list[int], length: int, disk_index: int = 0) -> int:
    """Overwrite ``length`` bytes at each offset straight into the image (the agent is stopped, so
    nothing tracks it), each with the data of a new write number logged as a prefill record;
    returns the bytes of the blocks that now differ from the replica."""
    header = writelog.read_header(log_path)
    seed, prof = header.data_args()
    differing = 0
    with writelog.LogWriter(log_path, seed, prof) as writer:
        fd = os.open(image, os.O_RDWR)
        try:
            wnum = writer.last_wnum
            for off in offsets:
                wnum += 1
                data = datagen.data_for(seed, wnum, length, prof)
                old = os.pread(fd, length, off)
                differing += 0 if old == data else length
                write_all(fd, data, off)
                writer.append(writelog.LogRecord(wnum, disk_index, writelog.KIND_PREFILL, off, length,
                                                 time.time_ns()))
            os.fsync(fd)
        finally:
            os.close(fd)
    return differing


# ---------------------------------------------------------------- the run


async def wait_resynced(admin: Any, disk_id: str, generation: int, timeout_s: float) -> dict[str, Any]:
    """Until the disk is protected under ``generation`` and its resync record is done; the record."""
    deadline = time.monotonic() + timeout_s
    while True:
        disk = next(d for d in await admin.disks() if d["disk_id"] == disk_id)
        last = disk.get("last_resync") or {}
        if disk["generation"] == generation and disk["state"] == "protected" and last.get("state") == "done":
            return dict(last)
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"disk {disk_id} not resynced under generation {generation}: {disk}")
        await asyncio.sleep(0.2)


def _record_seconds(rec: dict[str, Any]) -> float:
    return round((rec["ended_ns"] - rec["started_ns"]) / 1e9, 3)


async def initial_replication(lab: Lab, sc: Scenario, admin: Any) -> dict[str, Any]:
    before = lab_cpu(lab)
    seconds = await sc.protect(admin, timeout_s=TIMEOUT_S)
    cpu = by_role(cpu_delta(before, lab_cpu(lab)))
    [rec] = [r for r in await admin.resyncs(sc.disk_id) if r["generation"] == 1]
    return {"seconds": round(seconds, 3), "cs_record_seconds": _record_seconds(rec), "mode": rec["mode"],
            "bytes_sent": rec["bytes_sent"], "cpu_s": {k: round(v, 2) for k, v in cpu.items()}}


async def user_resync(lab: Lab, sc: Scenario, admin: Any) -> dict[str, Any]:
    """Ask the CS for a resync of the disk (reason ``user``) and wait until it is done: its
    mode, bytes compared and sent, wall seconds (ask to protected) and the daemons' CPU seconds."""
    before = lab_cpu(lab)
    t0 = time.monotonic()
    generation = int((await admin.api.post(f"/v1/disks/{sc.disk_id}/resync", {"reason": "user"}))["generation"])
    rec = await wait_resynced(admin, sc.disk_id, generation, TIMEOUT_S)
    wall = time.monotonic() - t0
    cpu = by_role(cpu_delta(before, lab_cpu(lab)))
    return {"generation": generation, "mode": rec["mode"], "bytes_compared": rec["bytes_compared"],
            "bytes_sent": rec["bytes_sent"], "seconds": round(wall, 3), "cs_record_seconds": _record_seconds(rec),
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()}}


async def resync(lab: Lab, sc: Scenario, admin: Any, seed: int) -> dict[str, Any]:
    """Stop the agent, change 1 % of the blocks behind its back, start it, resync through the CS."""
    size = sc.disk.size_bytes
    gen_before = next(d for d in await admin.disks() if d["disk_id"] == sc.disk_id)["generation"]
    lab.kill_node(sc.machine, signal.SIGTERM)
    offsets = choose_blocks(size, seed)
    differing = await asyncio.to_thread(write_untracked, sc.image, sc.log_path, offsets, DIFF_BLOCK)
    lab.start_node(sc.machine)
    await lab.wait_healthy(60.0, (sc.machine,))
    await wait_state(admin, sc.disk_id, "protected", 60.0)
    gen_after_restart = next(d for d in await admin.disks() if d["disk_id"] == sc.disk_id)["generation"]
    done = await user_resync(lab, sc, admin)
    hash_block = cast(int, AgentConfig.__dataclass_fields__["hash_block_bytes"].default)  # the lab sets none
    granular = hash_blocks(offsets, DIFF_BLOCK, hash_block) * hash_block
    return {"blocks_changed": len(offsets), "block_bytes": DIFF_BLOCK, "differing_bytes": differing,
            "hash_block_bytes": hash_block, "hash_granular_bytes": granular,
            "restart_resynced": gen_after_restart != gen_before, **done,
            "sent_to_differing": round(done["bytes_sent"] / differing, 3) if differing else None,
            "sent_to_hash_granular": round(done["bytes_sent"] / granular, 3)}


async def oracle_check(sc: Scenario, admin: Any) -> dict[str, Any]:
    """A few writes through the agent, then failover to latest, checked by the oracle."""
    proc = sc.start_workload(5.0, 2.0, None, "--max-writes", "20")
    stats = await asyncio.to_thread(sc.finish_workload, proc, 120.0)
    await sc.wait_drained(120.0)
    check = await sc.failover_and_verify(admin, "latest", "latest")
    return {"ok": check.ok, "detail": check.detail, "wnum_hi": int(check.result.get("point", {}).get("wnum_hi", 0)),
            "workload_writes": stats.get("writes", 0), "failover_s": round(check.seconds, 3)}


async def _run(quick: bool, seed: int, root: Path) -> dict[str, Any]:
    disk_mib = QUICK_MIB if quick else FULL_MIB
    lab = new_lab(root, 1, disk_mib, seed)
    sc = Scenario(lab, seed)
    await lab.init()
    lab.write_configs()
    await asyncio.to_thread(sc.prefill, FILL)
    written = sum(r.length for r in writelog.read_records(sc.log_path))
    mt_dir = lab.node_dir(lab.topology.mts[0])
    refs = await asyncio.to_thread(reference_copies, sc.image, mt_dir)
    rep: dict[str, Any] = {"disk_bytes": sc.disk.size_bytes, "written_bytes": written,
                           "image_allocated_bytes": allocated_bytes(sc.image), "references": refs}
    try:
        await lab.up()
        async with lab.admin() as admin:
            rep["initial_replication"] = await initial_replication(lab, sc, admin)
            rep["resync_equal"] = await user_resync(lab, sc, admin)  # nothing differs: the compare alone
            rep["resync"] = await resync(lab, sc, admin, seed)
            rep["oracle"] = await oracle_check(sc, admin)
    finally:
        left = await asyncio.to_thread(lab.down)
        rep["sigkilled"] = left
    return rep


def ratios(rep: dict[str, Any]) -> dict[str, Any]:
    ir, rs = rep["initial_replication"], rep["resync"]
    out = {"ir_mb_per_s_written": round(rep["written_bytes"] / ir["seconds"] / 1e6, 1),
           "ir_mb_per_s_disk": round(rep["disk_bytes"] / ir["seconds"] / 1e6, 1),
           "resync_to_ir_time": round(rs["seconds"] / ir["seconds"], 3),
           "resync_to_equal_resync_time": round(rs["seconds"] / rep["resync_equal"]["seconds"], 3)}
    for name, ref in rep["references"].items():
        if not ref.get("absent"):
            ref["mb_per_s_written"] = round(rep["written_bytes"] / ref["seconds"] / 1e6, 1)
            out[f"ir_to_{name}_time"] = round(ir["seconds"] / ref["seconds"], 2)
    return out


def run(quick: bool, seed: int) -> tuple[dict[str, Any], str]:
    """The benchmark (module contract of bench/all.py): the JSON report and its markdown."""
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    root = Path(tempfile.mkdtemp(prefix="drlab-bench-ir-"))
    try:
        figs = asyncio.run(_run(quick, seed, root))
    finally:
        if os.environ.get("DRLAB_BENCH_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)
    rep = {"benchmark": "initial_replication", "time_utc": started, "machine": machine(), "quick": quick,
           "seed": seed, "params": {"fill": FILL, "profile": PROFILE, "diff_block_bytes": DIFF_BLOCK,
                                    "diff_share": DIFF_SHARE}, **figs}
    rep["ratios"] = ratios(rep)
    return rep, markdown(rep)


def _ref_cell(ref: dict[str, Any]) -> str:
    return "absent" if ref.get("absent") else f"{ref['seconds']:.2f} s ({ref['mb_per_s_written']:.0f} MB/s)"


def markdown(rep: dict[str, Any]) -> str:
    ir, rs, r, o = rep["initial_replication"], rep["resync"], rep["ratios"], rep["oracle"]
    refs = rep["references"]
    ratio = {k: (f"{r[f'ir_to_{k}_time']:.2f}x" if f"ir_to_{k}_time" in r else "-") for k in refs}
    m = rep["machine"]
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(ir["cpu_s"].items()))
    rcpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(rs["cpu_s"].items()))
    lines = [
        "### Initial replication and resync", "",
        f"One {rep['disk_bytes'] >> 20} MiB disk, {rep['written_bytes'] >> 20} MiB written ({PROFILE} data), "
        "replicated by the lab's real daemons from protect to `protected`, against copies of the same image "
        "into the MT's filesystem in the same run; then a checksum resync after "
        f"{rs['blocks_changed']} blocks of {rs['block_bytes'] >> 10} KiB ({DIFF_SHARE:.0%}) changed behind the "
        f"agent's back ({rep['time_utc']}; {m['cpus']} CPUs, load {m['loadavg_1m']}, seed {rep['seed']}).", "",
        "| figure | value | reference | ratio |", "|---|---:|---|---:|",
        f"| initial replication | {ir['seconds']:.2f} s ({r['ir_mb_per_s_written']:.0f} MB/s written, "
        f"{r['ir_mb_per_s_disk']:.0f} MB/s of disk) | cp + sync {_ref_cell(refs['cp'])} | {ratio['cp']} |",
        f"| initial replication | (same) | nbdcopy {_ref_cell(refs['nbdcopy'])} | {ratio['nbdcopy']} |",
        f"| resync time | {rs['seconds']:.2f} s | initial replication {ir['seconds']:.2f} s "
        f"| {r['resync_to_ir_time']:.2f}x |",
        f"| resync time | (same) | resync with nothing differing {rep['resync_equal']['seconds']:.2f} s "
        f"| {r['resync_to_equal_resync_time']:.2f}x |",
        f"| resync bytes sent | {rs['bytes_sent'] / 1e6:.1f} MB | differing {rs['differing_bytes'] / 1e6:.1f} MB "
        f"| {rs['sent_to_differing']}x |",
        f"| resync bytes sent | (same) | {rs['hash_block_bytes'] >> 10} KiB hash blocks holding them "
        f"{rs['hash_granular_bytes'] / 1e6:.1f} MB | {rs['sent_to_hash_granular']}x |",
        f"| resync bytes compared | {rs['bytes_compared'] / 1e6:.0f} MB | disk {rep['disk_bytes'] / 1e6:.0f} MB "
        f"| {rs['bytes_compared'] / rep['disk_bytes']:.2f}x |", "",
        f"- CPU seconds during initial replication: {cpu}; during the resync: {rcpu}.",
        f"- Oracle, failover to latest (W {o['wnum_hi']}) after the resync: "
        f"{'byte-exact' if o['ok'] else 'FAILED: ' + o['detail']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.initial_replication", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"a {QUICK_MIB} MiB disk instead of {FULL_MIB} MiB")
    p.add_argument("--seed", type=int, default=0x5EED)
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (default bench/results)")
    args = p.parse_args(argv)
    rep, md = run(args.quick, args.seed)
    publish(rep, md, args.out, "initial_replication", "quick" if args.quick else "")
    return 0 if rep["oracle"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
