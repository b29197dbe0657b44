"""Recovery points as an operator chooses them, as a whole-lab drill (CS, MT, PS and the agent each its
own process; the workload writing across two disks): the machine's and a disk's listings show each
point's time, types (from bookmarks requested through the CS), accuracy and write range, and the
named choices; latest (received) is never behind latest-processed; failing the machine over to each
named choice, and to a time in the window, lands on the listed point — checked by the oracle."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from common import oracle
from deploy.lab import Lab
from deploy.scenario import MachineCheck, Scenario
from deploy.topology import load
from tests.integration.conftest import Machine, run_cli
from tests.integration.conftest import write_topology as lab_topology

DISK_MIB = 16
NAMES = ("disk0", "disk1")


@pytest.fixture
async def lab2(tmp_path: Path) -> AsyncIterator[Lab]:
    net = random.randrange(30, 250)
    path = lab_topology(tmp_path / "lab.toml", net, machines=[Machine(disks=dict.fromkeys(NAMES, DISK_MIB))])
    the_lab = Lab(load(path), tmp_path / "lab")
    try:
        yield the_lab
    finally:
        left = the_lab.down()
        assert not left, f"daemons needed SIGKILL at teardown: {left}"


async def bookmark(admin: Any, machine_id: str, name: str, consistency: str) -> dict[str, Any]:
    """A bookmark of the machine by the CS's two-phase protocol, once committed."""
    api = admin._api
    bm = await api.post("/v1/bookmarks", {"machines": [machine_id], "name": name, "consistency": consistency,
                                          "timeout_s": 5})
    deadline = time.monotonic() + 20
    while bm["state"] not in ("committed", "aborted"):
        assert time.monotonic() < deadline, bm
        await asyncio.sleep(0.05)
        bm = await api.get(f"/v1/bookmarks/{bm['bookmark_id']}")
    assert bm["state"] == "committed", bm
    return dict(bm)


def drlab(lab: Lab, *args: str) -> str:
    return run_cli(lab, *args, timeout_s=60).stdout


def assert_at(check: MachineCheck, item: dict[str, Any]) -> None:
    """The job landed on the listed machine point: its W and every disk's batch; the oracle agrees."""
    assert check.ok, check.detail
    assert check.wnum == item["wnum"], (check.label, check.wnum, item["wnum"])
    chosen = {d["disk_id"]: (d["point"]["gen"], d["point"]["seq"]) for d in check.result["disks"]}
    assert chosen == {d: (p["gen"], p["seq"]) for d, p in item["disks"].items()}, check.label


@pytest.mark.timeout(150)
async def test_listing_types_ranges_and_named_choices_land_where_listed(lab2: Lab, seed: int) -> None:
    lab, sc = lab2, Scenario(lab2, seed)
    await lab.up()
    async with lab.admin() as admin:
        await sc.protect(admin, timeout_s=60)
        proc = sc.start_workload(2, 5, [0, 1])
        try:
            await asyncio.sleep(1.0)
            app = await bookmark(admin, sc.machine_id, "points-app", "app")
            await asyncio.sleep(0.7)
            crash = await bookmark(admin, sc.machine_id, "points-crash", "crash")
            await asyncio.sleep(0.5)
            # under load: what the MT received is never behind what it applied
            for _ in range(3):
                named = (await admin.machine_points(sc.machine_id, limit=50))["named"]
                assert named["latest"]["wnum"] >= named["latest_processed"]["wnum"], named
                disk = await admin._api.get(f"/v1/disks/{sc.disk_ids['disk0']}/points", params={"limit": 5})
                d_latest, d_processed = disk["named"]["latest"], disk["named"]["latest_processed"]
                assert d_latest["point"]["wnum_hi"] >= d_processed["point"]["wnum_hi"], disk["named"]
                assert d_latest["staged"]["pending"] <= d_latest["staged"]["batches"]
                await asyncio.sleep(0.2)
        finally:
            stats = await asyncio.to_thread(sc.finish_workload, proc, 60)
        assert stats["writes"] > 50

        listing = await sc.wait_machine_drained(admin)
        listing = await admin.machine_points(sc.machine_id, limit=1000)
        named, items = listing["named"], listing["items"]
        by_w = {i["wnum"]: i for i in items}
        app_w, crash_w = named["latest_app_consistent"]["wnum"], named["latest_multi_machine"]["wnum"]
        assert named["latest_app_consistent"]["tag"] == app["tag"] == "group-app:points-app"
        assert named["latest_multi_machine"]["tag"] == crash["tag"] == "group-crash:points-crash"
        assert app_w < crash_w <= listing["latest_wnum"]
        assert by_w[app_w]["types"] == ["crash-consistent", "app-consistent", "multi-machine"]
        assert by_w[crash_w]["types"] == ["crash-consistent", "multi-machine"]
        assert by_w[app_w]["tags"] == [app["tag"]]
        plain = [i for i in items if not i["tags"]]
        assert plain and all(i["types"] == ["crash-consistent"] for i in plain)
        for item in items:  # time, accuracy and write range on every point
            assert item["accuracy"] in ("exact", "approximate") and item["t_ns"] > 0
            assert item["wnum_hi"] == item["wnum"] and item["wnum_first"] <= item["wnum"]
            for p in item["disks"].values():
                assert p["wnum_hi"] <= item["wnum"] and (p["wnum_first"] == 0 or p["wnum_first"] <= p["wnum_hi"])
        # the bookmark's own points are the ones the listing shows at its W
        for bm, w in ((app, app_w), (crash, crash_w)):
            [member] = bm["members"]
            assert {d: (p["gen"], p["seq"]) for d, p in by_w[w]["disks"].items()} == {
                d: (p["gen"], p["seq"]) for d, p in member["points"].items()}
        drained = named["latest"]
        assert drained["wnum"] == named["latest_processed"]["wnum"] == listing["latest_wnum"]
        window = named["window"]
        assert window["oldest_t_ns"] <= items[0]["t_ns"] and window["newest_wnum"] == listing["latest_wnum"]

        # the operator's view: the CLI's tables and summaries
        text = await asyncio.to_thread(drlab, lab, "machine", "points", sc.machine_id, "--limit", "1000")
        assert "latest-app-consistent" in text and app["tag"] in text and crash["tag"] in text
        assert "crash,app,multi" in text and f"W={app_w}" in text
        disk_out = json.loads(await asyncio.to_thread(drlab, lab, "disk", "points", sc.disk_ids["disk1"], "--json"))
        assert disk_out["named"]["latest_app_consistent"]["point"]["tags"] == [app["tag"]]
        assert "app-consistent" in disk_out["named"]["latest_app_consistent"]["point"]["types"]

        # each named choice lands on the point the listing names; a time in the window too
        middle = items[len(items) // 2]
        choices: list[tuple[Any, dict[str, Any]]] = [
            ("latest-app-consistent", by_w[app_w]), ("latest-multi-machine", by_w[crash_w]),
            ("latest-processed", items[-1]), ("latest", items[-1]), ({"time_ns": middle["t_ns"]}, middle)]
        for point, item in choices:
            check = await sc.machine_failover_and_verify(admin, point, str(point))
            assert_at(check, item)
            assert oracle.machine_consistency(
                sc.log_path, {sc.disk_index(d["name"]): int(d["point"]["wnum_hi"]) for d in check.result["disks"]}).ok
            print(f"{check.label}: W={check.wnum} in {check.seconds:.2f} s")
