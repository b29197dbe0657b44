"""The dashboard end to end: Debian's chromium, headless, driven by Playwright against a running lab.

An operator logs in through the page's form; the machines and components tables show what the API
says; the machine's RPO is shown once it has points; a click on "Test failover" starts a job the
jobs table shows within seconds, and follows to its end without a reload; the discovered machines
of the lab's hypervisor are listed as GET /v1/inventory says, to an admin and to a reader session;
a screenshot is saved.
Chromium comes from Debian (`make system-deps`, part of `make test`): without it the test fails.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from common import tls
from common.http import ApiClient
from deploy.lab import Lab
from deploy.scenario import Scenario
from tests.integration.conftest import down_clean, hv_lab

OPERATOR, PASSWORD = "dash-admin", "dashboard password 1"
READER = "dash-reader"
WAIT_S = 20.0
OLD1_DISKS = '[{ name = "disk0", size_mib = 8 }, { name = "disk1", size_mib = 4 }]'


@pytest.fixture
async def hvlab(tmp_path: Path) -> AsyncIterator[Lab]:
    """The lab of ``make_lab(32)`` (one machine, one 32 MiB disk) and a hypervisor hv1 with two VMs."""
    lab = hv_lab(tmp_path, disk_mib=32, old1_disks=OLD1_DISKS)
    try:
        yield lab
    finally:
        down_clean(lab)


def size(n: int) -> str:
    """A disk size as the page writes it (dashboard.js ``size``)."""
    unit, div = ("GiB", 2**30) if n >= 2**30 else ("MiB", 2**20) if n >= 2**20 else ("B", 1)
    return f"{round(n / div, 1):g} {unit}"


def inventory_rows(items: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """GET /v1/inventory's items as the discovered-machines table should show them."""
    return sorted((i["hypervisor"], i["vm"], i["power_state"],
                   ", ".join(f"{d['name']} {size(d['size_bytes'])}" for d in i["disks"]),
                   "installed" if i["agent_installed"] else "—",
                   i["component_id"][:8] if i["component_id"] else "—",
                   "protected" if i["protected"] else "no") for i in items)


INVENTORY_COLS = ("hypervisor", "vm", "power", "disks", "agent", "machine", "protected")


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run `make system-deps` (or `apt-get install -y chromium`);"
                    " `make test` installs it", pytrace=False)
    return path


async def eventually(what: str, check: Callable[[], Awaitable[Any]], timeout_s: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something true; fail with its last value after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s (last: {value!r})"
        await asyncio.sleep(0.25)


async def same(what: str, sides: Callable[[], Awaitable[tuple[Any, Any]]], timeout_s: float = WAIT_S) -> Any:
    """Poll ``sides`` (what the page shows, what the API says) until they are equal; returns them."""
    deadline = time.monotonic() + timeout_s
    while True:
        shown, want = await sides()
        if shown == want:
            return shown
        assert time.monotonic() < deadline, f"{what}: the page shows {shown}, the API says {want}"
        await asyncio.sleep(0.25)


async def table(page: Any, table_id: str, *cols: str) -> list[tuple[str, ...]]:
    """The rows of a dashboard table, as the cells named ``cols`` (data-col) show them."""
    rows = await page.query_selector_all(f"#{table_id} tbody tr[data-id]")
    out = []
    for row in rows:
        cells = [await row.query_selector(f'[data-col="{c}"]') for c in cols]
        out.append(tuple([(await c.inner_text()).strip() if c else "" for c in cells]))
    return sorted(out)


@pytest.mark.timeout(240)
async def test_dashboard_shows_the_api_and_follows_a_job(hvlab: Lab, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright  # a dev dependency (pyproject.toml)

    exe = chromium()
    lab = hvlab
    seed = int(os.environ.get("DRLAB_SEED") or random.randrange(1, 2**31))
    print(f"DRLAB_SEED={seed}")
    sc = Scenario(lab, seed)
    await lab.up()
    api = ApiClient(lab.topology.cs_url, tls.client_context(lab.admin_files), timeout_s=15.0)
    async with lab.admin() as admin, async_playwright() as pw:
        await sc.protect(admin, timeout_s=90)
        proc = sc.start_workload(2, 1.5, [0])
        await asyncio.to_thread(sc.finish_workload, proc, 60)
        await sc.wait_machine_drained(admin)
        await api.post("/v1/operators", {"name": OPERATOR, "role": "admin", "password": PASSWORD})
        await api.post("/v1/operators", {"name": READER, "role": "reader", "password": PASSWORD})

        async def discovered() -> Any:
            items = (await api.get("/v1/inventory"))["items"]
            return items if {i["vm"] for i in items} == {"web1", "old1"} else None

        await eventually("hv1's discovery reported its VMs", discovered, timeout_s=60)

        browser = await pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            context = await browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 1100})
            page = await context.new_page()
            page.set_default_timeout(WAIT_S * 1000)
            await page.goto(lab.topology.cs_url + "/dashboard")
            await page.wait_for_selector("#login-view:not([hidden])")
            await page.fill("#login-name", OPERATOR)
            await page.fill("#login-password", "not the password")
            await page.click("#login-submit")
            await page.wait_for_selector("#login-error:text('wrong name or password')")
            await page.fill("#login-password", PASSWORD)
            await page.click("#login-submit")
            await page.wait_for_selector("#dashboard-view:not([hidden])")
            assert OPERATOR in await page.inner_text("#who")

            async def machines() -> tuple[Any, Any]:
                items = (await api.get("/v1/machines", params={"limit": 1000}))["items"]
                want = sorted((m["name"], m["protection_state"]) for m in items)
                return await table(page, "machines", "name", "state"), want

            async def components() -> tuple[Any, Any]:
                items = (await api.get("/v1/components", params={"limit": 1000}))["items"]
                want = sorted((c["role"], c["host_id"], c["component_id"][:8], c["health"]) for c in items)
                return await table(page, "components", "role", "host", "id", "health"), want

            assert await same("the machines table shows GET /v1/machines", machines) == [
                (sc.machine.name, "protected")]
            assert len(await same("the components table shows GET /v1/components", components)) == 3

            async def inventory() -> tuple[Any, Any]:
                want = inventory_rows((await api.get("/v1/inventory"))["items"])
                return await table(page, "inventory", *INVENTORY_COLS), want

            assert await same("the discovered machines table shows GET /v1/inventory", inventory) == [
                ("hv1", "old1", "off", "disk0 8 MiB, disk1 4 MiB", "—", "—", "no"),
                ("hv1", "web1", "on", "disk0 8 MiB", "—", "—", "no")]
            assert "hv1: 2 machines" in await page.inner_text("#hypervisors-note")
            rpo = (await api.get("/v1/dashboard/rpo"))["machines"]
            assert sc.machine_id in rpo, rpo  # the machine has points: it has an RPO
            row = f'#machines tr[data-id="{sc.machine_id}"]'
            await eventually("the machine's RPO is shown", lambda: _text_not(page, f'{row} [data-col="rpo"]', "—"))
            await eventually("the RPO chart draws the machine",
                             lambda: page.query_selector(f'#rpo-chart polyline[data-machine="{sc.machine_id}"]'))

            before = {j["job_id"] for j in (await api.get("/v1/jobs", params={"limit": 1000}))["items"]}
            await page.click(f'{row} button[data-action="test-failover"]')

            async def new_job() -> Any:
                items = (await api.get("/v1/jobs", params={"kind": "machine-test-failover", "limit": 50}))["items"]
                return next((j for j in items if j["job_id"] not in before), None)

            job = await eventually("the click started a test failover job", new_job)
            assert job["disk_id"] == sc.machine_id, job  # a machine operation's target
            job_row = f'#jobs tr[data-id="{job["job_id"]}"]'
            await page.wait_for_selector(job_row)
            final = await admin.wait_job(job["job_id"], timeout_s=90)
            assert final["state"] == "succeeded", final
            await page.wait_for_selector(f'{job_row}[data-state="succeeded"]')  # the page followed, no reload
            assert (await page.inner_text(f'{job_row} [data-col="state"]')).strip() == "succeeded"
            assert (await page.inner_text(f'{job_row} [data-col="target"]')).strip() == sc.machine.name
            assert "100%" in await page.inner_text(f'{job_row} [data-col="progress"]')

            await page.click(f'{row} [data-col="name"] a')  # its recovery points
            await page.wait_for_selector("#points tbody tr[data-wnum]", timeout=60_000)

            async def points() -> tuple[Any, Any]:
                listing = await admin.machine_points(sc.machine_id, limit=20)
                shown = await page.eval_on_selector_all("#points tbody tr[data-wnum]",
                                                        "rows => rows.map(r => Number(r.dataset.wnum))")
                if sorted(shown) != sorted(int(p["wnum"]) for p in listing["items"]):
                    await page.click("#points-refresh")
                return sorted(shown), sorted(int(p["wnum"]) for p in listing["items"])

            assert await same("the recovery points table shows GET /v1/machines/{id}/points", points)

            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            print(f"dashboard screenshot: {shot}")

            reader = await (await browser.new_context(ignore_https_errors=True)).new_page()  # its own cookie
            reader.set_default_timeout(WAIT_S * 1000)
            await reader.goto(lab.topology.cs_url + "/dashboard")
            await reader.fill("#login-name", READER)
            await reader.fill("#login-password", PASSWORD)
            await reader.click("#login-submit")
            await reader.wait_for_selector("#dashboard-view:not([hidden])")
            assert "(reader)" in await reader.inner_text("#who")

            async def reader_inventory() -> tuple[Any, Any]:
                want = inventory_rows((await api.get("/v1/inventory"))["items"])
                return await table(reader, "inventory", *INVENTORY_COLS), want

            assert len(await same("a reader's page shows GET /v1/inventory", reader_inventory)) == 2
            assert await reader.is_disabled(f'{row} button[data-action="test-failover"]')
            assert not await reader.is_visible("#banner")  # every poll answered (no 403)
        finally:
            await browser.close()
            await api.close()


async def _text_not(page: Any, selector: str, unwanted: str) -> bool:
    node = await page.query_selector(selector)
    return node is not None and (await node.inner_text()).strip() not in ("", unwanted)
