"""Push installation of the mobility agent, done by the PS for the CS's ``push_install`` jobs.

For each ``push_installs`` item of the settings document (``{job_id, hypervisor, vm, host_id,
account}``) not yet handled by this process, one owned task: claims the job
(``POST /v1/ps/self/push/{job_id}/claim`` -> the VM's guest account, a fresh enrollment token and
the hypervisor's address, port and fingerprint), asks the hypervisor to install the agent
(``POST /api/vms/{vm}/guest/install-agent`` with the guest account, ``cs_url`` = this PS's CS URL
and the token), and reports ``POST /v1/ps/self/push/{job_id}/result`` ``{"ok": true}`` or
``{"ok": false, "code", "message"}`` (the hypervisor's code: ``guest_credentials_refused``,
``vm_powered_off``, ``not_found``; or ``unreachable``, ``fingerprint_mismatch``).

Rules: a job is claimed at most once per process; a claim refused with 409 (claimed before, e.g. by
an earlier run of this PS) or any non-retriable error ends the job here; a claim that could not
reach the CS is tried again on the next document. The password and the token live only in the
task's locals and are never logged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from common import errors
from common import logging as dlog
from common.http import ApiClient, retrying
from common.tasks import cancel_and_wait
from ps import hvclient

log = dlog.get("drlab.ps.push")

CLAIM_ATTEMPTS = 5
INSTALL_ATTEMPTS = 3
RESULT_ATTEMPTS = 20


@dataclass(frozen=True)
class PushItem:
    job_id: str
    hypervisor: str
    vm: str
    host_id: str
    account: str


def parse_pushes(document: dict[str, Any]) -> list[PushItem]:
    items = []
    for raw in document.get("push_installs", []) or []:
        try:
            items.append(PushItem(job_id=str(raw["job_id"]), hypervisor=str(raw["hypervisor"]), vm=str(raw["vm"]),
                                  host_id=str(raw.get("host_id", "")), account=str(raw.get("account", ""))))
        except (KeyError, TypeError, AttributeError):
            log.warning("push_item_ignored", item=str(raw)[:200])
    return items


class PushInstaller:
    def __init__(self, cs: ApiClient, *, cs_url: str, timeout_s: float = 30.0, max_backoff_s: float = 5.0) -> None:
        self.cs = cs
        self.cs_url = cs_url
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.handled: dict[str, dict[str, Any] | None] = {}  # job id -> result reported (None: not ours)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def apply(self, document: dict[str, Any]) -> None:
        for item in parse_pushes(document):
            if item.job_id not in self.handled and item.job_id not in self._tasks:
                self._tasks[item.job_id] = asyncio.create_task(self._run(item), name=f"push-{item.job_id}")

    async def _run(self, item: PushItem) -> None:
        try:
            self.handled[item.job_id] = await self.run_one(item)
        except errors.DrlabError as exc:
            if not exc.retriable:
                self.handled[item.job_id] = None
            log.warning("push_install_abandoned", job=item.job_id, code=exc.code, error=exc.message)
        except Exception as exc:  # a bug: this job is not retried by this process
            self.handled[item.job_id] = None
            log.error("push_install_failed", job=item.job_id, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._tasks.pop(item.job_id, None)

    async def run_one(self, item: PushItem) -> dict[str, Any] | None:
        """Claim, install, report; returns the result reported (None if the claim was refused)."""
        base = f"/v1/ps/self/push/{quote(item.job_id, safe='')}"
        try:
            claim = await retrying(lambda: self.cs.post(f"{base}/claim"), what="push claim",
                                   max_backoff_s=self.max_backoff_s, attempts=CLAIM_ATTEMPTS)
        except errors.Conflict as exc:
            log.info("push_claim_refused", job=item.job_id, error=exc.message)
            return None
        result = await self._install(item, claim)
        del claim
        await retrying(lambda: self.cs.post(f"{base}/result", result), what="push result",
                       max_backoff_s=self.max_backoff_s, attempts=RESULT_ATTEMPTS)
        log.info("push_install_reported", job=item.job_id, vm=item.vm, ok=result["ok"], code=result.get("code"))
        return result

    async def _install(self, item: PushItem, claim: dict[str, Any]) -> dict[str, Any]:
        try:
            target = hvclient.Target(str(claim["address"]), int(claim.get("port", 443)),
                                     claim.get("fingerprint") or None, self.timeout_s)
            auth = hvclient.Basic(str(claim["username"]), str(claim["password"]))
            body = {"cs_url": self.cs_url, "enroll_token": str(claim["enroll_token"])}
        except (KeyError, TypeError, ValueError) as exc:
            return {"ok": False, "code": "bad_claim", "message": f"the claim is missing {exc}"}
        path = f"/api/vms/{quote(item.vm, safe='')}/guest/install-agent"
        try:
            _, answer = await retrying(lambda: hvclient.call(target, "POST", path, auth, body), what="push install",
                                       max_backoff_s=self.max_backoff_s, attempts=INSTALL_ATTEMPTS)
        except errors.DrlabError as exc:
            return {"ok": False, "code": exc.code, "message": exc.message}
        log.info("push_install_done", job=item.job_id, vm=item.vm, pid=answer.get("pid"),
                 restarted=answer.get("restarted"))
        return {"ok": True}

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(tasks)
