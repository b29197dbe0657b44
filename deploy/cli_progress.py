"""Following long CS jobs from the CLI: a live progress bar on a terminal, plain step lines
otherwise, then a readable summary table (or the job as JSON only with ``--json``).

Exit codes, the same for every command that waits (also in ``drlab --help`` and README.md):
``0`` the job succeeded (or, without ``--wait``, was accepted), ``1`` it failed, ``2`` bad usage
or an error from the CS (argparse, ``errors.DrlabError`` in deploy/cli.py ``main``), ``3`` it did
not end within ``--timeout-s`` (it keeps running on the CS), ``130`` interrupted.

Rules: a step is printed once (steps are append-only in the job record); the bar's description
is the newest step's name and its completion the job's ``percent``; nothing but the final JSON
goes to stdout with ``--json``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from deploy import report

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
FINAL = ("succeeded", "failed")
POLL_S = 0.5
EXIT_CODES_HELP = ("exit codes: 0 success (a waited-for job succeeded), 1 the job failed, 2 bad usage or "
                   "an error from the CS, 3 --wait timed out (the job keeps running), 130 interrupted")


def exit_code(job: dict[str, Any]) -> int:
    """0 succeeded, 1 failed, 3 not final (pure)."""
    state = job.get("state")
    return EXIT_OK if state == "succeeded" else EXIT_FAILED if state == "failed" else EXIT_TIMEOUT


def step_line(step: dict[str, Any]) -> str:
    """One recorded step as a plain line (pure)."""
    pct = f" {float(step['percent']):.0f}%" if isinstance(step.get("percent"), int | float) else ""
    detail = str(step.get("detail") or "")
    return f"step{pct}: {step.get('name', '')}" + (f" ({detail[:200]})" if detail else "")


# -- the summary (pure) ---------------------------------------------------------------------

def _point(d: dict[str, Any]) -> str:
    point = d.get("point") or (d.get("result") or {}).get("point")
    if not isinstance(point, dict):
        return "" if point is None else str(point)
    wnum = point.get("wnum_hi", point.get("wnum"))
    return " ".join(str(x) for x in (f"W {wnum}" if wnum is not None else "", point.get("accuracy") or "") if x)


def _path(d: dict[str, Any]) -> str:
    inner: dict[str, Any] = d["result"] if isinstance(d.get("result"), dict) else {}
    for key in ("image_path", "replica_path", "nbd_url"):
        for src in (d, inner):
            if isinstance(src.get(key), str):
                return str(src[key])
    return ""


def disk_rows(result: dict[str, Any]) -> list[list[str]]:
    """Machine, disk, name, state, point and image or replica path of every disk the result names
    (a machine operation's ``disks``, a plan's ``machines.*.disks``)."""
    groups: list[tuple[str, list[Any]]] = [(str(result.get("machine_id") or ""), list(result.get("disks") or []))]
    machines = result.get("machines")
    if isinstance(machines, dict):
        groups += [(str(m), list(v.get("disks") or [])) for m, v in sorted(machines.items()) if isinstance(v, dict)]
    return [[m, str(d.get("disk_id", "")), str(d.get("name") or ""), str(d.get("state") or ""), _point(d), _path(d)]
            for m, disks in groups for d in disks if isinstance(d, dict)]


def _w(result: dict[str, Any]) -> Any:
    if result.get("wnum") is not None:
        return result["wnum"]
    return (result.get("failover") or {}).get("wnum") if isinstance(result.get("failover"), dict) else None


def summary_tables(job: dict[str, Any], headline: Sequence[str] = ()) -> str:
    """The readable end of a followed job: state (W, accuracy, error), its disks, its steps."""
    result: dict[str, Any] = job["result"] if isinstance(job.get("result"), dict) else {}
    facts = [("kind", job.get("kind")), ("state", job.get("state")), ("W", _w(result)),
             ("accuracy", result.get("accuracy")), ("error", job.get("error"))]
    parts = list(headline) + [report.table(["job", str(job.get("job_id"))], [[k, v] for k, v in facts
                                                                        if v not in (None, "")])]
    disks = disk_rows(result)
    if disks:
        keep = [i for i in range(6) if any(row[i] for row in disks)]
        heads = ["machine", "disk", "name", "state", "point", "image / replica"]
        parts.append(report.table([heads[i] for i in keep], [[row[i] for i in keep] for row in disks]))
    steps = [s for s in job.get("steps") or [] if isinstance(s, dict)]
    if steps:
        parts.append(report.table(["%", "step", "detail"], [
            [f"{float(s['percent']):.0f}" if isinstance(s.get("percent"), int | float) else "", s.get("name", ""),
             str(s.get("detail") or "")[:120]] for s in steps]))
    return "\n".join(parts)


# -- the display: a bar on a terminal, lines otherwise ---------------------------------------

class Display:
    """Shows a job's progress: ``update(job)`` with each polled job, ``close()`` at the end."""

    def __init__(self, out: TextIO, tty: bool, quiet: bool) -> None:
        self.out, self.quiet, self.shown = out, quiet, 0
        self.bar: Any = None
        if tty and not quiet:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                TimeElapsedColumn(), console=Console(file=out), transient=False)
            self.bar.start()
        self.tasks: dict[str, Any] = {}

    def item(self, key: str, percent: float, text: str) -> None:
        """One bar (one job or one disk) at ``percent`` with ``text`` (no-op in plain mode)."""
        if self.bar is None:
            return
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(text, total=100.0)
        self.bar.update(self.tasks[key], completed=max(0.0, min(100.0, percent)), description=text)

    def line(self, text: str) -> None:
        """A plain line (above the bar on a terminal; nothing when quiet)."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.out, flush=True)

    def update(self, job: dict[str, Any]) -> None:
        steps = [s for s in job.get("steps") or [] if isinstance(s, dict)]
        for step in steps[self.shown:]:
            self.line(step_line(step))
        self.shown = len(steps)
        name = str(steps[-1].get("name", "")) if steps else str(job.get("state", ""))
        self.item("job", float(job.get("percent") or 0.0), f"{job.get('kind') or 'job'}: {name}"[:60])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _tty(out: TextIO, tty: bool | None) -> bool:
    return bool(out.isatty()) if tty is None else tty


async def follow_job(api: Any, job_id: str, timeout_s: float, *, as_json: bool = False, out: TextIO | None = None,
                     tty: bool | None = None, headline: Callable[[dict[str, Any]], list[str]] | None = None,
                     poll_s: float | None = None) -> int:
    """Follow job ``job_id`` (``api.get`` of ``/v1/jobs/ID``) until it ends or ``timeout_s``
    passes, then print its summary (or JSON); the exit code (0, 1 or 3)."""
    out = sys.stdout if out is None else out
    display = Display(out, _tty(out, tty), as_json)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            job = dict(await api.get(f"/v1/jobs/{job_id}"))
            display.update(job)
            if job.get("state") in FINAL or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_S if poll_s is None else poll_s)
    finally:
        display.close()
    code = exit_code(job)
    if as_json:
        print(json.dumps(job, indent=2), file=out)
    else:
        print(summary_tables(job, headline(job) if headline and code != EXIT_TIMEOUT else ()), file=out)
    if code == EXIT_TIMEOUT:
        print(f"drlab: job {job_id} still {job.get('state')} after {timeout_s:.0f} s "
              f"(it keeps running: drlab job {job_id})", file=sys.stderr)
    return code


def run_job(args: Any, path: str, body: dict[str, Any] | None,
            headline: Callable[[dict[str, Any]], list[str]] | None = None) -> int:
    """POST ``path`` (a route answering ``{"job_id"}``); without ``args.wait`` print the id (JSON
    with ``--json``) and return 0, with it follow the job (``follow_job``)."""
    from deploy.cli import _admin_api

    async def go(api: Any) -> int:
        job_id = str((await api.post(path, body))["job_id"])
        if not args.wait:
            print(json.dumps({"job_id": job_id}) if args.json else job_id)
            return EXIT_OK
        if not args.json:
            print(f"job {job_id}", flush=True)
        return await follow_job(api, job_id, args.timeout_s, as_json=args.json, headline=headline)

    return int(_admin_api(args, go))


# -- a machine's initial replication --------------------------------------------------------

def disk_line(disk: dict[str, Any]) -> str:
    """A plain line for one disk's replication state (pure)."""
    return f"disk {disk.get('name') or disk.get('disk_id')}: {disk.get('state')} {float(disk.get('percent') or 0):.0f}%"


async def follow_protect(list_disks: Callable[[], Any], disk_ids: Sequence[str], timeout_s: float, *,
                         as_json: bool = False, out: TextIO | None = None, tty: bool | None = None,
                         poll_s: float | None = None) -> int:
    """Follow the initial replication of ``disk_ids`` (``await list_disks()``: GET /v1/disks) until
    every one is ``protected`` (0) or ``timeout_s`` passes (3). Plain mode prints a line when a
    disk's state changes or its percent passes a tenth; then a table of the disks (or JSON)."""
    out = sys.stdout if out is None else out
    display = Display(out, _tty(out, tty), as_json)
    deadline, wanted = time.monotonic() + timeout_s, set(disk_ids)
    seen: dict[str, tuple[Any, int]] = {}
    try:
        while True:
            disks = sorted((d for d in await list_disks() if d.get("disk_id") in wanted),
                           key=lambda d: (str(d.get("name")), str(d.get("disk_id"))))
            for d in disks:
                pct = float(d.get("percent") or 0.0) if d.get("state") != "protected" else 100.0
                mark = (d.get("state"), int(pct // 10))
                if seen.get(d["disk_id"]) != mark:
                    seen[d["disk_id"]] = mark
                    display.line(disk_line({**d, "percent": pct}))
                display.item(str(d["disk_id"]), pct, f"{d.get('name') or d['disk_id']}: {d.get('state')}")
            done = len(disks) == len(wanted) and all(d.get("state") == "protected" for d in disks)
            if done or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_S if poll_s is None else poll_s)
    finally:
        display.close()
    if as_json:
        print(json.dumps(disks, indent=2), file=out)
    else:
        print(report.table(["disk", "name", "state", "%", "PS", "MT"], [
            [d.get("disk_id"), d.get("name"), d.get("state"), f"{float(d.get('percent') or 0):.0f}",
             d.get("ps_id") or "", d.get("mt_id") or ""] for d in disks]), file=out)
    if not done:
        print(f"drlab: not every disk is protected after {timeout_s:.0f} s (replication continues)", file=sys.stderr)
    return EXIT_OK if done else EXIT_TIMEOUT
