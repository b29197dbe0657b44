"""``drlab ps list``: each process server's load from its last heartbeat (ps/service.py
``metrics``) — cache free %, backlog, upload throughput, machine count, services not running,
and under it each machine's average churn — the table ``drlab ps balance`` prints before it
moves machines, to help choose. A PS that does not report a value shows ``-``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from deploy import report

HEADERS = ["PS", "cache free %", "backlog MB", "throughput MB/s", "machines", "services", "machine", "churn MB/s"]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _mb(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value / 1e6:.{digits}f}"


def _backlog(metrics: dict[str, Any]) -> float | None:
    disks = metrics.get("disks")
    if not isinstance(disks, dict):
        return None
    return float(sum(_num(d.get("backlog_bytes")) or 0.0 for d in disks.values() if isinstance(d, dict)))


def _services(metrics: dict[str, Any]) -> str:
    services = metrics.get("services")
    if not isinstance(services, dict):
        return "-"
    stopped = sorted(str(name) for name, state in services.items() if state != "running")
    return "stopped: " + ", ".join(stopped) if stopped else "running"


def load_rows(components: list[dict[str, Any]]) -> list[list[str]]:
    """The table's rows (pure): per PS (by host id) a row, then a row per machine it serves with
    the machine's host id (its agent's, else the id's start) and churn."""
    names = {c["component_id"]: c.get("host_id") or c["component_id"][:8] for c in components}
    rows: list[list[str]] = []
    for ps in sorted((c for c in components if c.get("role") == "ps"), key=lambda c: str(c.get("host_id"))):
        m = ps.get("metrics") or {}
        free = _num(m.get("cache_free_pct"))
        machines = m["machines"] if isinstance(m.get("machines"), dict) else {}
        count = _num(m.get("machine_count"))
        rows.append([str(ps.get("host_id") or ps["component_id"][:8]), "-" if free is None else f"{free:.1f}",
                     _mb(_backlog(m)), _mb(_num(m.get("upload_bytes_per_s")), 2),
                     "-" if count is None else str(int(count)), _services(m), "", ""])
        for machine_id, info in sorted(machines.items(), key=lambda kv: str(names.get(kv[0], kv[0]))):
            churn = _num(info.get("churn_bytes_per_s")) if isinstance(info, dict) else None
            rows.append(["", "", "", "", "", "", str(names.get(machine_id, machine_id[:8])), _mb(churn, 2)])
    return rows


def render(components: list[dict[str, Any]]) -> str:
    """The whole table (pure)."""
    return report.table(HEADERS, load_rows(components))


async def fetch(api: Any) -> list[dict[str, Any]]:
    from cs.client import all_pages

    return await all_pages(api, "/v1/components")


def cmd_list(args: argparse.Namespace) -> int:
    from deploy.cli import _admin_api

    components = _admin_api(args, fetch)
    if args.json:
        print(json.dumps([{"component_id": c["component_id"], "host_id": c.get("host_id"),
                           "metrics": c.get("metrics")} for c in components if c.get("role") == "ps"], indent=2))
    else:
        print(render(components))
    return 0


def add_parsers(psub: Any) -> None:
    ls = psub.add_parser("list", help="each PS's cache free space, backlog, throughput, machines and their churn")
    ls.set_defaults(func=cmd_list)
