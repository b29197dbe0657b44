"""Typed async client for the CS's admin routes (the `drlab` CLI, the lab and tests use it).

    async with CSAdminClient(cs_url, IdentityFiles(data_dir / "admin")) as admin:
        await admin.protect(machine_id)
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

from common import errors, tls
from common.http import ApiClient

Point = str | dict[str, int]
FINAL_JOB_STATES = ("succeeded", "failed")


async def all_pages(api: ApiClient, path: str, params: dict[str, Any] | None = None, *, most: int | None = None,
                    page_size: int = 1000) -> list[dict[str, Any]]:
    """Every item of a list route (``{items, next}``), following ``next``; at most ``most`` items."""
    query: dict[str, Any] = {**(params or {}), "limit": min(page_size, most or page_size)}
    items: list[dict[str, Any]] = []
    while most is None or len(items) < most:
        page = await api.get(path, params=query)
        items += page["items"]
        if page.get("next") is None:
            break
        query["cursor"] = page["next"]
    return items if most is None else items[:most]


class CSAdminClient:
    def __init__(self, cs_url: str, files: tls.IdentityFiles, *, timeout_s: float = 30.0) -> None:
        self.cs_url = cs_url
        self._api = ApiClient(cs_url, tls.client_context(files), timeout_s=timeout_s)

    def __repr__(self) -> str:
        return f"CSAdminClient({self.cs_url})"

    async def __aenter__(self) -> CSAdminClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._api.close()

    @property
    def api(self) -> ApiClient:
        """The raw admin API (for routes without a typed method here)."""
        return self._api

    async def components(self) -> list[dict[str, Any]]:
        return await all_pages(self._api, "/v1/components")

    async def disks(self) -> list[dict[str, Any]]:
        return await all_pages(self._api, "/v1/disks")

    async def protect(self, machine_id: str, policy: str | None = None, **targets: Any) -> list[dict[str, Any]]:
        """``targets``: ``ps_id``, ``mt_id``, ``seed`` (cs/targets.py)."""
        body = {**({"policy": policy} if policy is not None else {}), **targets}
        return list((await self._api.post(f"/v1/machines/{machine_id}/protect", body or None))["disks"])

    async def machine_op(self, machine_id: str, op: str, body: dict[str, Any] | None = None) -> str:
        """Start a failover operation of a machine (cs/machine_ops.py: test-failover, failover,
        change-point, cleanup-test-failover, commit); returns its job id."""
        return str((await self._api.post(f"/v1/machines/{machine_id}/{op}", body or {}))["job_id"])

    async def resyncs(self, disk_id: str) -> list[dict[str, Any]]:
        """The disk's resyncs, newest first (reason, mode, bytes compared and sent)."""
        return await all_pages(self._api, f"/v1/disks/{disk_id}/resyncs")

    async def ensure_site(self, name: str, kind: str) -> None:
        """Create the site unless it exists."""
        try:
            await self._api.post("/v1/sites", {"name": name, "kind": kind})
        except errors.Conflict:
            pass

    async def site_members(self, name: str, members: list[str]) -> None:
        await self._api.post(f"/v1/sites/{name}/members", {"members": members})

    async def failover(self, disk_id: str, point: Point = "latest", image: bool = False) -> str:
        """Fail a disk over; ``image``: the job also writes the view's image file (``image_path``)."""
        body: dict[str, Any] = {"point": point, **({"image": True} if image else {})}
        return str((await self._api.post(f"/v1/disks/{disk_id}/failover", body))["job_id"])

    async def machine_points(self, machine_id: str, limit: int = 100) -> dict[str, Any]:
        """The machine's consistent points (every protected disk at one W), oldest first."""
        return dict(await self._api.get(f"/v1/machines/{machine_id}/points", params={"limit": limit}))

    async def machine_failover(self, machine_id: str, point: Point = "latest", image: bool = False) -> str:
        """Fail every protected disk of the machine over to one machine point; returns the job id.
        ``image``: every disk's image file is written too (``image_path`` in the result)."""
        body: dict[str, Any] = {"point": point, **({"image": True} if image else {})}
        return str((await self._api.post(f"/v1/machines/{machine_id}/failover", body))["job_id"])

    async def ps_move(self, ps_id: str, kind: str, body: dict[str, Any]) -> str:
        """Queue a PS ``switch`` (every machine) or ``balance`` (``machine_ids``) job; returns its id."""
        return str((await self._api.post(f"/v1/ps/{ps_id}/{kind}", body))["job_id"])

    async def add_hypervisor(self, name: str, address: str, account: str, ps_id: str, *, port: int = 443,
                             fingerprint: str | None = None) -> dict[str, Any]:
        """Add a hypervisor discovered by ``ps_id`` with account-store account ``account``."""
        body = {"name": name, "address": address, "port": port, "account": account, "ps_id": ps_id,
                **({"fingerprint": fingerprint} if fingerprint is not None else {})}
        return dict(await self._api.post("/v1/hypervisors", body))

    async def hypervisors(self) -> list[dict[str, Any]]:
        return await all_pages(self._api, "/v1/hypervisors")

    async def hypervisor(self, name: str) -> dict[str, Any]:
        return dict(await self._api.get(f"/v1/hypervisors/{name}"))

    async def remove_hypervisor(self, name: str) -> None:
        await self._api.request("DELETE", f"/v1/hypervisors/{name}")

    async def discover_hypervisor(self, name: str) -> dict[str, Any]:
        """Ask the hypervisor's PS to discover it now."""
        return dict(await self._api.post(f"/v1/hypervisors/{name}/discover"))

    async def inventory(self, hypervisor: str | None = None) -> list[dict[str, Any]]:
        """Discovered machines, with ``component_id`` (registered agent or None) and ``protected``."""
        params = {"hypervisor": hypervisor} if hypervisor is not None else None
        return list((await self._api.get("/v1/inventory", params=params))["items"])

    async def install_agent(self, hypervisor: str, vm: str, account: str, ps_id: str | None = None) -> str:
        """Queue a push install of the agent on a discovered VM; returns the job id."""
        body = {"account": account, **({"ps_id": ps_id} if ps_id is not None else {})}
        return str((await self._api.post(f"/v1/inventory/{hypervisor}/{vm}/install", body))["job_id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        return dict(await self._api.get(f"/v1/jobs/{job_id}"))

    async def wait_job(self, job_id: str, timeout_s: float = 300.0, poll_s: float = 0.2) -> dict[str, Any]:
        """The job once it succeeded or failed; ``Unavailable`` if it is still going after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = await self.job(job_id)
            if job["state"] in FINAL_JOB_STATES:
                return job
            if time.monotonic() >= deadline:
                raise errors.Unavailable(f"job {job_id} still {job['state']} after {timeout_s:.0f} s")
            await asyncio.sleep(poll_s)
