"""Retention on the master target over real processes, with tiny journal segments and a small
retention volume (MT config: segment_max_bytes, retention_max_bytes): under the policy's ``prune``
the MT prunes the oldest segments as the volume runs low; switched to ``pause`` it stops applying
and the CS raises ``retention_low_space`` (critical), cleared once space returns (switched back to
``prune``); nothing acknowledged is lost, and every recovery point the MT still lists that claims
accuracy is byte-exact under the oracle."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from common import oracle
from deploy.lab import Lab
from deploy.scenario import Scenario
from deploy.topology import Node
from tests.integration.conftest import LabMaker, until

DISK_MIB = 8
MAX_CHECKED = 60  # points checked by the oracle (each a failover image of DISK_MIB)
MT_EXTRA = {"segment_max_bytes": 128 << 10, "retention_max_bytes": 3 << 20, "retention_low_free_pct": 20.0,
            "retention_resume_free_pct": 40.0, "retention_check_interval_s": 0.2}


def small_volume(lab: Lab) -> None:
    """The MT's config gets MT_EXTRA (the lab writes every config file at ``up``)."""
    plain = lab.config_for

    def config_for(node: Node) -> dict[str, Any]:
        return {**plain(node), **MT_EXTRA} if node.role == "mt" else plain(node)

    lab.config_for = config_for  # type: ignore[method-assign]


def floor_of(lab: Lab, disk_id: str) -> int:
    path = lab.node_dir(lab.topology.mts[0]) / "journal" / disk_id / "floor.json"
    return int(json.loads(path.read_text())["floor"]) if path.exists() else 0


async def retention_alerts(api: Any) -> dict[str, str]:
    items = (await api.get("/v1/alerts", params={"active": 1}))["items"]
    return {str(a.get("disk_id")): str(a["severity"]) for a in items if a["code"] == "retention_low_space"}


async def verify_point(admin: Any, sc: Scenario, point: dict[str, Any]) -> None:
    job = await admin.wait_job(await admin.failover(sc.disk_id, {"gen": point["gen"], "seq": point["seq"]}, image=True),
                               timeout_s=60)
    assert job["state"] == "succeeded", job
    res = await asyncio.to_thread(oracle.verify, sc.log_path, 0, DISK_MIB << 20, int(point["wnum_hi"]),
                                  Path(job["result"]["image_path"]))
    assert res.ok, f"point {point['gen']}/{point['seq']} (W {point['wnum_hi']}): {res.detail}"


# writes of at most 64 KiB: a batch's undo fits a few to a 128 KiB segment, so pruning for space leaves
# many points to check (a 1 MiB write fills whole segments, and a seed with a few of them at the end
# left only two points)
SMALL_WRITES = ("--write-sizes", "4096:0.5,65536:0.5")


@pytest.mark.timeout(240)
async def test_low_space_prunes_or_pauses_and_every_listed_point_stays_valid(make_lab: LabMaker, seed: int) -> None:
    lab = make_lab(DISK_MIB)
    small_volume(lab)
    sc = Scenario(lab, seed)
    await lab.up()
    async with lab.admin() as admin:
        api = admin._api
        await sc.protect(admin, timeout_s=90)
        # prune (the default policy's action): the volume fills, the oldest segments go
        await asyncio.to_thread(sc.finish_workload, sc.start_workload(1.5, 3, [0], *SMALL_WRITES), 60)
        await sc.wait_drained()
        await until("segments pruned for space", 20, lambda: asyncio.sleep(0, floor_of(lab, sc.disk_id) > 1))
        # pruning inside the window may warn while it catches up, never more; it clears at once
        assert set((await retention_alerts(api)).values()) <= {"warning"}
        await until("no retention alert once pruning freed space", 20, lambda: _is(retention_alerts(api), {}))

        # pause: applying stops under the threshold, the CS raises the alert, nothing is lost
        await api.request("PATCH", "/v1/policies/default", json_body={"low_space_action": "pause"})
        await asyncio.sleep(1.5)  # the MT's settings long-poll brings the new action
        proc = sc.start_workload(1.5, 3, [0], *SMALL_WRITES)
        await until("retention_low_space raised", 40,
                    lambda: _is(retention_alerts(api), {sc.disk_id: "critical"}))
        await asyncio.to_thread(sc.finish_workload, proc, 60)
        held = [p["seq"] for p in await sc.points()]
        await asyncio.sleep(1.0)
        assert [p["seq"] for p in await sc.points()] == held, "a paused MT applies nothing"
        assert max(int(p["wnum_hi"]) for p in await sc.points()) < sc.last_wnum()

        # space returns (back to prune): applying resumes, the alert clears, every write lands
        await api.request("PATCH", "/v1/policies/default", json_body={"low_space_action": "prune"})
        await until("retention_low_space cleared", 40, lambda: _is(retention_alerts(api), {}))
        await sc.wait_drained()

        points = [p for p in await sc.points() if p.get("accuracy") != "none"]
        assert len(points) >= 3
        step = max(1, len(points) // MAX_CHECKED)  # every listed point, unless there are very many
        for i in sorted({*range(0, len(points), step), len(points) - 1}):
            await verify_point(admin, sc, points[i])
        latest = points[-1]
        assert int(latest["wnum_hi"]) == sc.last_wnum()


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
