"""CS capacity: sustained heartbeats per second and their latency, beside a no-database endpoint.

``python -m bench.cs_heartbeats [--components 500] [--duration 10] [--concurrency 64]
[--engine sqlite|postgresql ...] [--db-url URL]`` (``make bench-cs``).

Per engine: a fresh CS in its own process (its own CPU when there are two), N simulated
components (agents, PS and MT) registered through the real registration, then a load generator
in another process drives, over one keep-alive mutual-TLS connection per component and for a
fixed duration, first ``GET /v1/ping`` (authenticated, no database: the same-run reference of
TLS + HTTP + JSON on this server), then ``POST /v1/heartbeat``. The report gives the rate,
p50/p90/p99/max latency, the CS's CPU use and the heartbeat/ping ratio, as JSON and a markdown
table in ``bench/results/`` and on stdout.

Engines: ``sqlite`` (default, a file in the fresh data dir); ``postgresql`` needs ``--db-url
postgresql+asyncpg://...`` naming an empty database (the CS initialises it), or a throwaway
server from ``tests/pgserver.py`` when that helper is present.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bench import procs
from bench.results_io import machine, publish

RESULTS = Path(__file__).resolve().parent / "results"
START_TIMEOUT_S = 120.0
ENGINES = ("sqlite", "postgresql")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.cs_heartbeats", description=__doc__.splitlines()[0])
    p.add_argument("--components", type=int, default=500, help="simulated components (default 500)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each phase (default 2)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    p.add_argument("--engine", action="append", choices=ENGINES, help="repeatable; default sqlite")
    p.add_argument("--phase", action="append", choices=procs.PHASES, help="repeatable; default both, ping first")
    p.add_argument("--db-url", default="", help="postgresql+asyncpg://... of an empty database")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (default bench/results)")
    p.add_argument("--label", default="", help="a word for the result file names (e.g. before, after)")
    p.add_argument("--quiet", action="store_true", help="print only the markdown table")
    args = p.parse_args(argv)
    if args.components < 1 or args.duration <= 0 or args.warmup < 0 or args.concurrency < 1:
        p.error("--components and --concurrency must be >= 1, --duration > 0 and --warmup >= 0")
    if args.db_url and make_url(args.db_url).get_backend_name() != "postgresql":
        p.error("--db-url must be a postgresql+asyncpg:// URL (SQLite needs none)")
    args.phase = [ph for ph in procs.PHASES if ph in (args.phase or procs.PHASES)]
    if args.engine is None:
        args.engine = ["postgresql"] if args.db_url else ["sqlite"]
    return args


def cpus() -> tuple[int | None, int | None]:
    """(CPU of the CS, CPU of the generator): two different ones when the machine has them."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return (available[0], available[1]) if len(available) >= 2 else (None, None)


@contextlib.contextmanager
def database(engine: str, db_url: str) -> Iterator[str]:
    """The database URL for ``engine`` ("" = the CS's default SQLite file)."""
    if engine == "sqlite":
        yield ""
    elif db_url:
        yield db_url
    else:
        yield from _throwaway_postgresql()


def _throwaway_postgresql() -> Iterator[str]:
    """A PostgreSQL server of its own (tests/pgserver.py: fsync and synchronous_commit off, like
    SQLite's WAL with synchronous=NORMAL, whose commits do not wait for the disk either)."""
    try:
        from tests import pgserver
    except ImportError:
        raise SystemExit("--engine postgresql needs --db-url postgresql+asyncpg://... "
                         "(tests/pgserver.py, which starts a throwaway server, is not here)") from None
    try:
        server = pgserver.PGServer()
        server.start()
    except pgserver.PGUnavailable as exc:
        raise SystemExit(f"no throwaway PostgreSQL: {exc}") from None
    try:
        yield server.url(asyncio.run(server.create_database()))
    finally:
        server.stop()


def run_engine(engine: str, db_url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    cs_cpu, gen_cpu = cpus()
    parent, child = ctx.Pipe()
    cs = ctx.Process(target=procs.cs_main, args=(child, str(workdir / "cs"), db_url, cs_cpu), name="bench-cs")
    cs.start()
    try:
        started = _started(parent, cs)
        spec = {"url": started["url"], "cs_pid": started["pid"], "cs_data_dir": started["data_dir"],
                "fleet_dir": str(workdir / "fleet"), "components": args.components, "phases": args.phase,
                "duration_s": args.duration, "warmup_s": args.warmup, "concurrency": args.concurrency}
        result = _generate(ctx, spec, gen_cpu)
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        stalls = parent.recv() if cs.is_alive() and parent.poll(30) else {}
        cs.join(30)
        if cs.is_alive():
            cs.terminate()
            cs.join(5)
    if "error" in result:
        raise SystemExit(f"the load generator failed: {result['error']}")
    for phase in result["phases"].values():
        phase["cs_stalls"] = procs.stall_summary(phase.pop("window"), stalls.get("loop_stalls", []),
                                                 stalls.get("gc_pauses", []))
    shown = make_url(db_url).render_as_string(hide_password=True) if db_url else "sqlite (file in a fresh data dir)"
    return {"engine": engine, "database": shown, "cpus": {"cs": cs_cpu, "generator": gen_cpu}, **result,
            "heartbeat_to_ping": _ratio(result["phases"])}


def _started(pipe: Any, cs: Any) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not pipe.poll(0.2):
        if not cs.is_alive():
            raise SystemExit(f"the CS process exited ({cs.exitcode}) before it served; see its traceback above")
        if time.monotonic() > deadline:
            raise SystemExit(f"the CS did not start within {START_TIMEOUT_S:g} s")
    return dict(pipe.recv())


def _generate(ctx: Any, spec: dict[str, Any], cpu: int | None) -> dict[str, Any]:
    parent, child = ctx.Pipe()
    gen = ctx.Process(target=procs.generator_main, args=(child, spec, cpu), name="bench-generator")
    gen.start()
    budget = START_TIMEOUT_S + len(spec["phases"]) * (spec["duration_s"] + spec["warmup_s"] + 30)
    try:
        if not parent.poll(budget):
            raise SystemExit(f"the load generator gave no result within {budget:g} s")
        return dict(parent.recv())
    finally:
        gen.join(10)
        if gen.is_alive():
            gen.terminate()
            gen.join(5)


def _ratio(phases: dict[str, Any]) -> float:
    ping = phases.get("ping", {}).get("rate_per_s", 0.0)
    return round(phases.get("heartbeat", {}).get("rate_per_s", 0.0) / ping, 3) if ping else 0.0


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"benchmark": "cs_heartbeats",
            "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "params": {"components": args.components, "duration_s": args.duration, "warmup_s": args.warmup,
                       "concurrency": args.concurrency},
            "runs": runs}


def markdown(rep: dict[str, Any]) -> str:
    p = rep["params"]
    lines = [f"CS heartbeats, {p['components']} components, {p['concurrency']} in flight, "
             f"{p['duration_s']:g} s per phase ({rep['time_utc']})", "",
             "| engine | endpoint | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | CS CPU % | CS CPU µs/req "
             "| generator CPU % |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in rep["runs"]:
        for name, ph in run["phases"].items():
            endpoint = "GET /v1/ping (no DB)" if name == "ping" else "POST /v1/heartbeat"
            lines.append(f"| {run['engine']} | {endpoint} | {ph['rate_per_s']:.0f} | {ph['p50_ms']:.1f} | "
                         f"{ph['p90_ms']:.1f} | {ph['p99_ms']:.1f} | {ph['max_ms']:.1f} | {ph['errors']} | "
                         f"{ph['cs_cpu_pct']:.0f} | {ph['cs_cpu_us_per_request']:.0f} | "
                         f"{ph['generator_cpu_pct']:.0f} |")
    lines.append("")
    for run in rep["runs"]:
        lines.append(f"- {run['engine']}: heartbeat/ping = {run['heartbeat_to_ping']:.2f}; "
                     f"{run['components_heartbeated']} of {p['components']} components' heartbeats in the "
                     f"database; registration {run['registration_s']:g} s")
        for name, ph in run["phases"].items():
            st = ph["cs_stalls"]
            lines.append(f"  - {name}: CS event loop late > 20 ms {st['loop_stalls_over_20ms']} times (max "
                         f"{st['loop_stall_max_ms']:g} ms, {st['loop_stalled_ms']:g} ms in all); "
                         f"{st['gc_pauses']} GC pauses (max {st['gc_pause_max_ms']:g} ms)")
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for engine in args.engine:
        with tempfile.TemporaryDirectory(prefix=f"drlab-bench-{engine}-") as tmp, \
                database(engine, args.db_url) as db_url:
            runs.append(run_engine(engine, db_url, args, Path(tmp)))
    return report(args, runs)


def run(quick: bool, seed: int) -> tuple[dict[str, Any], str]:
    """For ``make bench`` (bench/all.py): both engines; quick: 100 components, 3 s per phase.
    (The fleet is random by nature; ``seed`` is not used.)"""
    argv = ["--engine", "sqlite", "--engine", "postgresql"]
    argv += ["--components", "100", "--duration", "3", "--warmup", "0.5"] if quick else []
    rep = measure(parse_args(argv))
    return rep, "### CS capacity: heartbeats beside a no-database endpoint\n\n" + markdown(rep)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rep = measure(args)
    publish(rep, markdown(rep), args.out, "cs_heartbeats", args.label, show_json=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
