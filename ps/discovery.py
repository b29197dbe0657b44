"""Discovery of the on-prem hypervisors this PS is given in its settings document.

For each ``hypervisors`` item (``{name, address, port, account, fingerprint, discover_seq}``) one
owned task discovers at start, then every ``discovery_interval_s``, and at once when the item
changes (a new ``discover_seq`` is "discover now"; a new address, port, account or fingerprint too).
An item no longer listed has its task cancelled.

One discovery: fetch the account's credentials from the CS (kept in memory for this call only),
``GET /api/vms`` on the hypervisor (TLS pinned to the fingerprint, or trust on first use: see
ps/hvclient.py), and report to the CS ``PUT /v1/ps/self/hypervisors/{name}/inventory`` either
``{"fingerprint", "machines"}`` or ``{"error": {"code", "message"}}`` with the codes
``unreachable``, ``credentials_refused`` (401 from the hypervisor), ``fingerprint_mismatch``,
``bad_response``. A CS that cannot be reached only delays the next report.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from common import errors
from common import logging as dlog
from common.http import ApiClient
from common.tasks import cancel_and_wait
from ps import hvclient

log = dlog.get("drlab.ps.discovery")

DEFAULT_INTERVAL_S = 900.0


@dataclass(frozen=True)
class HvItem:
    name: str
    address: str
    port: int
    account: str
    fingerprint: str | None
    discover_seq: int


def parse_hypervisors(document: dict[str, Any]) -> dict[str, HvItem]:
    """The document's well-formed hypervisor items by name (a malformed one is logged and skipped)."""
    items: dict[str, HvItem] = {}
    for raw in document.get("hypervisors", []) or []:
        try:
            item = HvItem(name=str(raw["name"]), address=str(raw["address"]), port=int(raw.get("port", 443)),
                          account=str(raw.get("account", "")), fingerprint=raw.get("fingerprint") or None,
                          discover_seq=int(raw.get("discover_seq", 0)))
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("hypervisor_item_ignored", item=str(raw)[:200])
            continue
        items[item.name] = item
    return items


def interval_of(document: dict[str, Any]) -> float:
    try:
        value = float(document.get("discovery_interval_s", DEFAULT_INTERVAL_S))
    except (TypeError, ValueError):
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def machines_of(hypervisor: str, answer: Any) -> list[dict[str, Any]]:
    """The CS's machine items from the hypervisor's ``/api/vms`` answer (BadRequest if malformed)."""
    try:
        return [{"hypervisor": hypervisor, "vm": str(vm["name"]), "host_id": str(vm["host_id"]),
                 "address": str(vm["address"]), "os": str(vm["os"]), "power_state": str(vm["power_state"]),
                 "agent_installed": bool(vm.get("agent_installed", False)),
                 "disks": [{"name": str(d["name"]), "size_bytes": int(d["size_bytes"])} for d in vm["disks"]]}
                for vm in answer["vms"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.BadRequest(f"the hypervisor's inventory is malformed: {type(exc).__name__}: {exc}",
                                code="bad_response") from exc


def error_code(exc: errors.DrlabError) -> str:
    if isinstance(exc, errors.Unauthorized):
        return "credentials_refused"
    return exc.code if exc.code in ("unreachable", "fingerprint_mismatch", "bad_response") else "bad_response"


class Discovery:
    """Owns one named task per hypervisor; :meth:`apply` follows the settings, :meth:`stop` cancels."""

    def __init__(self, cs: ApiClient, *, timeout_s: float = 30.0) -> None:
        self.cs = cs
        self.timeout_s = timeout_s
        self.interval_s = DEFAULT_INTERVAL_S
        self.items: dict[str, HvItem] = {}
        self.reports = 0  # inventory reports the CS accepted (tests wait on it)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}

    def apply(self, document: dict[str, Any]) -> None:
        self.interval_s = interval_of(document)
        items = parse_hypervisors(document)
        for name in set(self._tasks) - set(items):
            self._tasks.pop(name).cancel()
            self._wake.pop(name, None)
            self.items.pop(name, None)
        for name, item in items.items():
            changed = self.items.get(name) != item
            self.items[name] = item
            if name not in self._tasks:
                self._wake[name] = asyncio.Event()
                self._tasks[name] = asyncio.create_task(self._loop(name), name=f"discovery-{name}")
            elif changed:
                self._wake[name].set()

    async def _loop(self, name: str) -> None:
        wake = self._wake[name]
        while True:
            wake.clear()
            try:
                await self.discover_once(self.items[name])
            except Exception as exc:  # a bug must not end discovery of this hypervisor
                log.error("discovery_failed", hypervisor=name, error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await wake.wait()

    async def discover_once(self, item: HvItem) -> dict[str, Any] | None:
        """Discover one hypervisor and report it; returns the report (None if no credentials)."""
        path = f"/v1/ps/self/hypervisors/{quote(item.name, safe='')}"
        try:
            creds = await self.cs.post(f"{path}/credentials")
            auth = hvclient.Basic(str(creds["username"]), str(creds["password"]))
        except (errors.DrlabError, KeyError, TypeError) as exc:
            log.warning("hypervisor_credentials_unavailable", hypervisor=item.name, error=str(exc)[:300])
            return None
        target = hvclient.Target(item.address, item.port, item.fingerprint, self.timeout_s)
        report: dict[str, Any]
        try:
            seen, answer = await hvclient.call(target, "GET", "/api/vms", auth)
            report = {"fingerprint": seen, "machines": machines_of(item.name, answer)}
        except errors.DrlabError as exc:
            report = {"error": {"code": error_code(exc), "message": exc.message}}
        del auth, creds
        try:
            await self.cs.put(f"{path}/inventory", report)
            self.reports += 1
        except errors.DrlabError as exc:
            log.warning("inventory_report_refused", hypervisor=item.name, code=exc.code, error=exc.message)
        log.info("hypervisor_discovered", hypervisor=item.name, machines=len(report.get("machines", [])),
                 error=report.get("error"))
        return report

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(tasks)
