"""Recovery-point listings through the CS's routes (a disk's and a machine's, with their named
choices) and the machine failover to the tagged named points; the test plays the MT (it reads the
jobs from its settings and posts their results, as mt/jobs.py does)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import test_machine_api
from cshelpers import raw
from test_machine_api import Machine, image

from common import errors, tls

machine = test_machine_api.machine  # the fixture: a machine of three protected disks


def pt(seq: int, first: int, hi: int, t: int, tags: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"gen": 1, "seq": seq, "wnum_first": first, "wnum_hi": hi, "t_first_ns": t - 1, "t_last_ns": t,
            "accuracy": "exact", "tags": list(tags or []), **extra}


def named_answer(disk_id: str, points: list[dict[str, Any]], *, staged: int = 0,
                 received: dict[str, Any] | None = None) -> dict[str, Any]:
    """An MT's answer to ``{recent, named}`` over ``points`` (oldest first)."""
    def tagged(kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        return [p for p in reversed(points) if any(t.partition(":")[0] in kinds for t in p["tags"])]

    return {"disk_id": disk_id, "latest": points[-1], "points": points, "oldest": points[0],
            "received": received or {**points[-1], "staged": False},
            "staged": {"batches": staged, "bytes": 1000 * staged, "pending": staged},
            "app": tagged(("app", "group-app")), "multi": tagged(("group-app", "group-crash"))}


def three_disks() -> dict[str, list[dict[str, Any]]]:
    """A machine's three disks: bookmark g1 at W 6 and app:a2 at W 9 cut every disk; disk2 idle."""
    return {"disk0": [pt(1, 1, 3, 10), pt(2, 4, 6, 20, ["group-app:g1"]), pt(3, 8, 9, 30, ["app:a2"]),
                      pt(4, 10, 12, 40)],
            "disk1": [pt(1, 2, 3, 11), pt(2, 5, 6, 21, ["group-app:g1"]), pt(3, 7, 9, 31, ["app:a2"]),
                      pt(4, 11, 12, 41)],
            "disk2": [pt(1, 0, 3, 12), pt(2, 0, 6, 22, ["group-app:g1"]), pt(3, 0, 9, 32, ["app:a2"])]}


async def test_disk_listing_asks_its_mt_and_shows_types_ranges_and_named_choices(machine: Machine) -> None:
    m = machine
    disk_id = m.disks["disk0"]
    listing = asyncio.create_task(m.admin._api.get(f"/v1/disks/{disk_id}/points", params={"limit": 4}))
    [probe] = await m.mt_jobs(1)
    assert (probe["kind"], probe["disk_id"], probe["point"]) == ("points", disk_id, {"recent": 4, "named": True})
    points = three_disks()["disk0"]
    await m.post(probe, named_answer(disk_id, points, staged=2, received=pt(6, 13, 15, 60, staged=True)))
    out = await asyncio.wait_for(listing, 5)
    assert (out["disk_id"], out["name"], out["machine_id"]) == (disk_id, "disk0", m.machine_id)
    assert [(p["seq"], p["wnum_first"], p["wnum_hi"], p["t_last_ns"], p["types"]) for p in out["items"]] == [
        (1, 1, 3, 10, ["crash-consistent"]),
        (2, 4, 6, 20, ["crash-consistent", "app-consistent", "multi-machine"]),
        (3, 8, 9, 30, ["crash-consistent", "app-consistent"]),
        (4, 10, 12, 40, ["crash-consistent"])]
    named = out["named"]
    assert named["latest"]["point"]["seq"] == 6 and named["latest"]["applies_staged_first"]
    assert named["latest"]["staged"] == {"batches": 2, "bytes": 2000, "pending": 2}
    assert named["latest_processed"]["point"]["seq"] == 4
    assert named["latest_app_consistent"]["point"]["seq"] == 3
    assert named["latest_multi_machine"]["point"]["seq"] == 2
    assert named["window"]["oldest_t_ns"] == 10
    with pytest.raises(errors.NotFound):  # answered: the listing keeps no probe
        await m.admin.job(probe["job_id"])


async def test_machine_listing_names_its_choices(machine: Machine) -> None:
    m = machine
    listing = asyncio.create_task(m.admin.machine_points(m.machine_id, limit=10))
    probes = await m.mt_jobs(3)
    disks = three_disks()
    for probe in probes:
        name = m.name_of(probe["disk_id"])
        staged = 1 if name == "disk1" else 0
        received = pt(5, 13, 14, 50, staged=True) if staged else None
        await m.post(probe, named_answer(probe["disk_id"], disks[name], staged=staged, received=received))
    out = await asyncio.wait_for(listing, 5)
    named = out["named"]
    assert named["latest_processed"]["wnum"] == 9 and out["latest_wnum"] == 9
    assert named["latest"]["wnum"] == 9  # disk2's received is its latest (W 9)
    assert named["latest"]["staged"]["batches"] == 1 and named["latest"]["applies_staged_first"]
    assert (named["latest_app_consistent"]["wnum"], named["latest_app_consistent"]["tag"]) == (9, "app:a2")
    assert (named["latest_multi_machine"]["wnum"], named["latest_multi_machine"]["tag"]) == (6, "group-app:g1")
    by_w = {p["wnum"]: p for p in out["items"]}
    assert by_w[6]["types"] == ["crash-consistent", "app-consistent", "multi-machine"]
    assert by_w[9]["types"] == ["crash-consistent", "app-consistent"] and by_w[3]["types"] == ["crash-consistent"]
    assert (by_w[9]["wnum_first"], by_w[9]["wnum_hi"], by_w[9]["t_ns"]) == (7, 9, 32)


@pytest.mark.parametrize(("name", "wnum"), [("latest-app-consistent", 9), ("latest-multi-machine", 6)])
async def test_machine_failover_to_a_tagged_named_point_goes_to_its_w(machine: Machine, name: str,
                                                                      wnum: int) -> None:
    m = machine
    job_id = await m.admin.machine_failover(m.machine_id, name)
    probes = await m.mt_jobs(3)
    assert all(j["point"] == {"drain": True, "named": True} for j in probes)
    disks = three_disks()
    for probe in probes:
        await m.post(probe, named_answer(probe["disk_id"], disks[m.name_of(probe["disk_id"])]))
    failovers = await m.mt_jobs(3)
    assert all(j["kind"] == "failover" and j["point"] == {"wnum": wnum} for j in failovers), failovers
    for fo in failovers:
        at = next(p for p in reversed(disks[m.name_of(fo["disk_id"])]) if p["wnum_hi"] <= wnum)
        await m.post(fo, image(fo, at))
    done = await m.admin.wait_job(job_id, timeout_s=5)
    assert done["state"] == "succeeded" and done["result"]["wnum"] == wnum and done["result"]["point"] == name


async def test_a_tagged_failover_without_a_common_tag_fails_before_any_image(machine: Machine) -> None:
    m = machine
    job_id = await m.admin.machine_failover(m.machine_id, "latest-multi-machine")
    for probe in await m.mt_jobs(3):
        points = [pt(1, 1, 3, 10, ["group-crash:only-here"] if m.name_of(probe["disk_id"]) == "disk0" else [])]
        await m.post(probe, named_answer(probe["disk_id"], points))
    done = await m.admin.wait_job(job_id, timeout_s=5)
    assert done["state"] == "failed" and "no multi-machine point common to every disk" in done["error"]
    assert await m.mt_jobs(0) == []


@pytest.mark.parametrize(("path", "status"), [
    ("/v1/disks/{d}/points?limit=0", 400), ("/v1/disks/{d}/points?limit=1001", 400),
    ("/v1/disks/{d}/points?limit=x", 400), ("/v1/disks/{d}/points?tag=a", 400), ("/v1/disks/NOTHEX/points", 400),
    ("/v1/disks/" + "b" * 32 + "/points", 404),
])
async def test_bad_disk_listing_requests_are_refused_and_ask_nothing(machine: Machine, path: str,
                                                                     status: int) -> None:
    m = machine
    env = m.site.env
    code, reply = await raw(env.url, tls.client_context(env.admin_files), "GET",
                            path.format(d=m.disks["disk0"]), None)
    assert code == status and set(reply) == {"code", "message"}, reply
    assert await m.mt_jobs(0, timeout_s=0) == []


async def test_an_unprotected_disk_has_no_listing(machine: Machine) -> None:
    other, disks = await machine.site.agent(host_id="m2")
    with pytest.raises(errors.Conflict, match="not protected"):
        await machine.admin._api.get(f"/v1/disks/{disks['disk0']}/points")
    with pytest.raises(errors.Forbidden):  # only the admin reads a disk's points
        await other.api.get(f"/v1/disks/{machine.disks['disk0']}/points")
