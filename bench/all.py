"""``make bench`` / ``make bench-quick``: every benchmark in turn, one report.

``python -m bench.all [--quick] [--seed N] [--only e2e,initial_replication,rto,cs_heartbeats]``

Each section is a module of bench/ with ``run(quick, seed) -> (report, markdown)``; each measures
its own references in the same run (bench/README.md says how). The combined report goes to
``bench/results/bench-<UTC stamp>[-quick].json`` and ``.md`` and to stdout; a section that fails
is reported as failed (with its error) and the exit status is 1, the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.results_io import machine, write_report

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("e2e", "initial_replication", "rto", "cs_heartbeats")


def run_section(name: str, quick: bool, seed: int) -> tuple[dict[str, Any], str]:
    started = time.monotonic()
    try:
        rep, md = importlib.import_module(f"bench.{name}").run(quick, seed)
    except BaseException as exc:  # noqa: BLE001 - a failed section is reported, the others still run
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = "".join(traceback.format_exception(exc))[-4000:]
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": detail}, \
            f"### {name}: FAILED\n\n```\n{detail}\n```\n"
    rep["section_seconds"] = round(time.monotonic() - started, 1)
    return rep, md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.all", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the short smoke version of every benchmark")
    ap.add_argument("--seed", type=int, default=None, help="replay a run (default: random, printed)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    seed = args.seed if args.seed is not None else random.randrange(1, 2**31)
    print(f"drlab bench: seed {seed}{' (quick)' if args.quick else ''}; sections {', '.join(names)}",
          file=sys.stderr, flush=True)
    rep: dict[str, Any] = {"benchmark": "bench", "quick": args.quick, "seed": seed, "machine": machine(),
                           "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                           "sections": {}}
    parts = [f"## drlab benchmarks ({rep['time_utc']}, seed {seed}{', quick' if args.quick else ''}; "
             f"{rep['machine']['cpus']} CPUs, Python {rep['machine']['python']}, "
             f"load {rep['machine']['loadavg_1m']})\n"]
    for name in names:
        print(f"-- {name}", file=sys.stderr, flush=True)
        section, md = run_section(name, args.quick, seed)
        rep["sections"][name] = section
        parts.append(md)
        print(md, flush=True)
    markdown = "\n".join(parts)
    paths = write_report(rep, markdown, args.out, "bench", "quick" if args.quick else "")
    print(f"written: {' '.join(map(str, paths))}", file=sys.stderr)
    failed = [n for n, s in rep["sections"].items() if "error" in s]
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
