"""A CS with one MT played by the test (it answers the jobs of its settings as mt/jobs.py does) and
protected machines: for the failover operation and recovery plan tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from cshelpers import Enrolled, Site, settings

from common import errors
from common.http import ApiClient

SIZE = 1 << 20


def pt(seq: int, wnum_hi: int, t_last: int = 100, accuracy: str = "exact") -> dict[str, Any]:
    return {"gen": 1, "seq": seq, "wnum_first": 1, "wnum_hi": wnum_hi, "t_first_ns": t_last - 1,
            "t_last_ns": t_last, "accuracy": accuracy}


@dataclass
class OpsFleet:
    site: Site
    mt: Enrolled
    machines: dict[str, Enrolled]  # host id -> agent
    disks: dict[str, dict[str, str]]  # host id -> {name: disk id}
    latest: int = 30  # every disk's latest point: W
    fail_kinds: set[str] = field(default_factory=set)  # the MT fails jobs of these kinds
    fail_disks: set[str] = field(default_factory=set)  # ... only those of these disks (empty: of every disk)
    hold: bool = False  # the MT answers nothing while set
    seen: list[dict[str, Any]] = field(default_factory=list)  # every job the MT answered, in order
    _task: asyncio.Task[None] | None = None

    @property
    def admin(self) -> Any:
        return self.site.env.admin

    @property
    def api(self) -> ApiClient:
        return self.site.env.admin._api  # type: ignore[no-any-return]

    def mid(self, host: str) -> str:
        return self.machines[host].component_id

    def result(self, job: dict[str, Any]) -> dict[str, Any]:
        point = job["point"]
        if job["kind"] == "points":  # a listing probe (``recent``) also gets the disk's points
            listed = {"points": [pt(self.latest, self.latest)]} if isinstance(point, dict) and "recent" in point else {}
            return {"disk_id": job["disk_id"], "latest": pt(self.latest, self.latest), **listed}
        if job["kind"] in ("failover", "view-change"):
            wnum = (point["to"] if job["kind"] == "view-change" else point)["wnum"]
            image = {"image_path": f"/img/{job['job_id']}.img"} if job.get("image") is True else {}
            return {**image, "nbd_url": f"nbd://mt/{job['job_id']}", "disk_id": job["disk_id"], "point": pt(wnum, wnum)}
        if job["kind"] == "view-drop":
            return {"disk_id": job["disk_id"], "view": point["view"], "dropped": True}
        return {"disk_id": job["disk_id"], "replica_path": f"/replica/{job['disk_id']}.img"}

    def fails(self, job: dict[str, Any]) -> bool:
        return job["kind"] in self.fail_kinds and (not self.fail_disks or job["disk_id"] in self.fail_disks)

    async def _serve(self) -> None:
        answered: set[str] = set()
        while True:
            doc = (await settings(self.mt))["document"]
            for job in doc["jobs"]:
                if job["job_id"] in answered or self.hold:
                    continue
                body = ({"state": "failed", "error": f"{job['kind']} refused by the test"}
                        if self.fails(job) else {"state": "succeeded", "result": self.result(job)})
                await self.mt.api.post(f"/v1/jobs/{job['job_id']}/result", body)
                answered.add(job["job_id"])
                self.seen.append(job)
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self._task = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def op(self, host: str, route: str, body: dict[str, Any] | None = None) -> str:
        return str((await self.api.post(f"/v1/machines/{self.mid(host)}/{route}", body or {}))["job_id"])

    async def wait(self, job_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
        job = await self.admin.wait_job(job_id, timeout_s=timeout_s, poll_s=0.05)
        return dict(job)

    async def disk_states(self, host: str) -> dict[str, str]:
        ids = set(self.disks[host].values())
        return {d["name"]: d["state"] for d in await self.admin.disks() if d["disk_id"] in ids}

    async def refused(self, status: type[errors.DrlabError], method: str, path: str,
                      body: dict[str, Any] | None = None) -> str:
        try:
            await self.api.request(method, path, json_body=body or {})
        except status as exc:
            return exc.message
        raise AssertionError(f"{method} {path} was not refused with {status.__name__}")


async def make_fleet(env: Any, tmp: Any, hosts: tuple[str, ...] = ("m1",)) -> OpsFleet:
    site = Site(env, tmp)
    await site.ps()
    mt = await site.mt()
    machines, disks = {}, {}
    for host in hosts:
        agent, names = await site.agent(host, disks={"disk0": SIZE, "disk1": SIZE})
        await env.admin.protect(agent.component_id)
        machines[host], disks[host] = agent, names
    fleet = OpsFleet(site, mt, machines, disks)
    fleet.start()
    return fleet


@contextlib.asynccontextmanager
async def running_fleet(env: Any, tmp: Any, hosts: tuple[str, ...] = ("m1",)) -> AsyncIterator[OpsFleet]:
    """``make_fleet``, stopped and closed at the end (the tests' ``fleet`` fixtures)."""
    f = await make_fleet(env, tmp, hosts)
    try:
        yield f
    finally:
        await f.stop()
        await f.site.close()
