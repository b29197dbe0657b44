"""Bookmarks through the real CS over TLS: the admin starts them, member agents see the phases in
their settings documents and report; the sweeper aborts at the deadline; bad input is a 4xx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Enrolled, Site, raw, settings

from common import errors, tls
from common.http import ApiClient


@dataclass
class Lab:
    site: Site
    admin: ApiClient
    a: Enrolled
    b: Enrolled
    idle: Enrolled  # registered, no protected disk
    disks: dict[str, str]  # machine id -> its disk id


@pytest.fixture
async def lab(cs_env: Any, tmp_path: Path) -> AsyncIterator[Lab]:
    site = Site(cs_env, tmp_path)
    admin = ApiClient(cs_env.url, tls.client_context(cs_env.admin_files), timeout_s=15.0)
    try:
        await site.ps()
        await site.mt()
        a, da = await site.agent("ma")
        b, db = await site.agent("mb")
        idle, _ = await site.agent("idle")
        for m in (a, b):
            await admin.post(f"/v1/machines/{m.component_id}/protect")
        yield Lab(site, admin, a, b, idle, {a.component_id: da["disk0"], b.component_id: db["disk0"]})
    finally:
        await admin.close()
        await site.close()


async def marks(member: Enrolled) -> list[dict[str, Any]]:
    return list((await settings(member))["document"].get("bookmarks", []))


async def report(lab: Lab, member: Enrolled, bookmark_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return dict(await member.api.post(f"/v1/bookmarks/{bookmark_id}/report", body))


def points(lab: Lab, member: Enrolled) -> dict[str, list[int]]:
    return {lab.disks[member.component_id]: [1, 9]}


async def test_two_phase_commit_across_two_machines(lab: Lab) -> None:
    before = (await settings(lab.a))["version"]
    bm = await lab.admin.post("/v1/bookmarks", {"machines": [lab.a.component_id, lab.b.component_id],
                                                "name": "nightly-1", "timeout_s": 10})
    assert (bm["state"], bm["tag"], bm["consistency"], bm["name"]) == ("preparing", "group-app:nightly-1", "app",
                                                                      "nightly-1")
    bid = bm["bookmark_id"]
    woke = await settings(lab.a, version=before, wait_s=2)  # the long-poll returns at once
    assert woke["version"] > before
    [req] = woke["document"]["bookmarks"]
    assert (req["bookmark_id"], req["tag"], req["phase"], req["consistency"]) == (bid, "group-app:nightly-1",
                                                                                   "prepare", "app")
    assert 0 < req["remaining_ms"] <= 10_000
    assert await marks(lab.idle) == []

    s_a, s_b = "a0" * 16, "b0" * 16
    reply = await report(lab, lab.a, bid, {"state": "frozen", "session": s_a, "hook_ms": 12.5})
    assert (reply["state"], reply["phase"]) == ("preparing", "prepare")
    reply = await report(lab, lab.b, bid, {"state": "frozen", "session": s_b})
    assert (reply["state"], reply["phase"]) == ("committing", "commit")  # the last one learns it at once
    assert [m["phase"] for m in await marks(lab.a)] == ["commit"]

    version = (await settings(lab.a))["version"]
    await report(lab, lab.a, bid, {"state": "tagged", "session": s_a, "points": points(lab, lab.a), "freeze_ms": 4.0})
    assert (await settings(lab.a))["version"] == version  # no document changed: nobody is woken
    await report(lab, lab.b, bid, {"state": "tagged", "session": s_b, "points": points(lab, lab.b), "freeze_ms": 5.0})
    done = await lab.admin.get(f"/v1/bookmarks/{bid}")
    assert done["state"] == "committed" and done["reason"] is None and done["latency_ms"] > 0
    by_id = {m["machine_id"]: m for m in done["members"]}
    assert by_id[lab.a.component_id]["points"] == {lab.disks[lab.a.component_id]: {"gen": 1, "seq": 9}}
    assert by_id[lab.a.component_id]["hook_ms"] == 12.5 and by_id[lab.b.component_id]["freeze_ms"] == 5.0
    assert await marks(lab.a) == await marks(lab.b) == []
    assert (await settings(lab.a))["version"] > version
    # retries are answered alike; a contradicting report is refused
    await report(lab, lab.b, bid, {"state": "tagged", "session": s_b, "points": points(lab, lab.b)})
    with pytest.raises(errors.Conflict):
        await report(lab, lab.b, bid, {"state": "failed", "error": "late"})
    listed = await lab.admin.get("/v1/bookmarks", params={"state": "committed"})
    assert [i["bookmark_id"] for i in listed["items"]] == [bid]


@pytest.mark.timeout(30)
async def test_the_sweeper_aborts_at_the_deadline_and_frozen_members_are_told_to_thaw(lab: Lab) -> None:
    await lab.admin.put("/v1/groups/pair", {"machines": [lab.b.component_id, lab.a.component_id]})
    bm = await lab.admin.post("/v1/bookmarks", {"group": "pair", "timeout_s": 0.5, "consistency": "crash"})
    assert bm["group"] == "pair" and bm["tag"].startswith("group-crash:")
    await report(lab, lab.a, bm["bookmark_id"], {"state": "frozen", "session": "a1" * 16})
    for _ in range(100):
        got = await lab.admin.get(f"/v1/bookmarks/{bm['bookmark_id']}")
        if got["state"] == "aborted":
            break
        await asyncio.sleep(0.05)
    assert got["state"] == "aborted", got
    assert got["reason"] == f"timeout: {lab.b.component_id} did not freeze within 0.5 s"
    assert [m["phase"] for m in await marks(lab.a)] == ["abort"]
    # B's late freeze is answered with the abort; the machines are free for the next bookmark
    reply = await report(lab, lab.b, bm["bookmark_id"], {"state": "frozen", "session": "b1" * 16})
    assert (reply["state"], reply["phase"]) == ("aborted", "abort")
    await report(lab, lab.a, bm["bookmark_id"], {"state": "thawed", "session": "a1" * 16, "freeze_ms": 500.0})
    assert await marks(lab.a) == []
    nxt = await lab.admin.post("/v1/bookmarks", {"group": "pair"})
    assert nxt["state"] == "preparing"


BAD_REQUESTS: list[Any] = [
    {}, {"machines": []}, {"machines": "x"}, {"machines": ["nothex"]}, {"group": "g", "machines": ["ab" * 16]},
    {"group": "-bad"}, {"machines": ["ab" * 16], "name": "a b"}, {"machines": ["ab" * 16], "consistency": "vss"},
    {"machines": ["ab" * 16], "timeout_s": 0}, {"machines": ["ab" * 16], "timeout_s": 10_000},
    {"machines": ["ab" * 16], "timeout_s": "5"}, {"machines": ["ab" * 16], "extra": 1},
    {"machines": ["ab" * 16, "ab" * 16]},
]


async def test_bad_requests_are_4xx_json_and_start_nothing(lab: Lab) -> None:
    url, ssl = lab.site.env.url, tls.client_context(lab.site.env.admin_files)
    for body in BAD_REQUESTS:
        status, reply = await raw(url, ssl, "POST", "/v1/bookmarks", body)
        assert (status, reply["code"]) == (400, "bad_request"), body
        assert reply["message"]
    a, idle = lab.a.component_id, lab.idle.component_id
    assert (await raw(url, ssl, "POST", "/v1/bookmarks", {"machines": ["ef" * 16]}))[0] == 404
    assert (await raw(url, ssl, "POST", "/v1/bookmarks", {"group": "nogroup"}))[0] == 404
    status, reply = await raw(url, ssl, "POST", "/v1/bookmarks", {"machines": [a, idle]})
    assert status == 409 and "no protected disk" in reply["message"]
    status, reply = await raw(url, ssl, "POST", "/v1/bookmarks", "[1]")
    assert status == 400
    assert (await lab.admin.get("/v1/bookmarks"))["items"] == []
    for query in ("?limit=0", "?limit=x", "?state=done", "?group=-", "?page=2"):
        assert (await raw(url, ssl, "GET", "/v1/bookmarks" + query))[0] == 400, query
    assert (await raw(url, ssl, "GET", "/v1/bookmarks/nothex"))[0] == 400
    assert (await raw(url, ssl, "GET", "/v1/bookmarks/" + "cd" * 16))[0] == 404
    # roles: an agent may not start one, the admin may not report
    assert (await raw(url, lab.a.ssl, "POST", "/v1/bookmarks", {"machines": [a]}))[0] == 403
    bm = await lab.admin.post("/v1/bookmarks", {"machines": [a], "name": "one"})
    assert (await raw(url, ssl, "POST", f"/v1/bookmarks/{bm['bookmark_id']}/report", {"state": "frozen"}))[0] == 403
    # conflicts: the same tag again, a machine already in a bookmark
    status, reply = await raw(url, ssl, "POST", "/v1/bookmarks", {"machines": [lab.b.component_id], "name": "one"})
    assert status == 409 and "taken" in reply["message"]
    status, reply = await raw(url, ssl, "POST", "/v1/bookmarks", {"machines": [a, lab.b.component_id]})
    assert status == 409 and "already in a bookmark" in reply["message"]


BAD_REPORTS: list[Any] = [
    {}, {"state": "done"}, {"state": "frozen"}, {"state": "frozen", "session": "xyz"},
    {"state": "tagged", "session": "ab" * 16}, {"state": "tagged", "session": "ab" * 16, "points": {"x": [1, 1]}},
    {"state": "tagged", "session": "ab" * 16, "points": {"ab" * 16: [0, 1]}},
    {"state": "tagged", "session": "ab" * 16, "points": {"ab" * 16: [1]}},
    {"state": "failed", "points": {"ab" * 16: [1, 1]}}, {"state": "failed", "error": 5},
    {"state": "failed", "freeze_ms": -1}, {"state": "failed", "why": "x"},
]


async def test_bad_reports_are_4xx_and_change_nothing(lab: Lab) -> None:
    url = lab.site.env.url
    bm = await lab.admin.post("/v1/bookmarks", {"machines": [lab.a.component_id]})
    path = f"/v1/bookmarks/{bm['bookmark_id']}/report"
    for body in BAD_REPORTS:
        status, reply = await raw(url, lab.a.ssl, "POST", path, body)
        assert (status, reply["code"]) == (400, "bad_request"), body
    foreign = {"state": "tagged", "session": "ab" * 16, "points": {lab.disks[lab.b.component_id]: [1, 1]}}
    status, reply = await raw(url, lab.a.ssl, "POST", path, foreign)
    assert status == 400 and "not a protected disk" in reply["message"]
    assert (await raw(url, lab.b.ssl, "POST", path, {"state": "frozen", "session": "ab" * 16}))[0] == 403
    assert (await raw(url, lab.a.ssl, "POST", f"/v1/bookmarks/{'cd' * 16}/report", {"state": "failed"}))[0] == 404
    got = await lab.admin.get(f"/v1/bookmarks/{bm['bookmark_id']}")
    assert got["state"] == "preparing" and got["members"][0]["state"] == "pending"


async def test_groups_are_listed_replaced_and_deleted(lab: Lab) -> None:
    url, ssl = lab.site.env.url, tls.client_context(lab.site.env.admin_files)
    g = await lab.admin.put("/v1/groups/g1", {"machines": [lab.a.component_id]})
    assert g["machines"] == [lab.a.component_id]
    g = await lab.admin.put("/v1/groups/g1", {"machines": [lab.b.component_id, lab.a.component_id]})
    assert g["machines"] == sorted([lab.a.component_id, lab.b.component_id])
    assert [x["name"] for x in (await lab.admin.get("/v1/groups"))["items"]] == ["g1"]
    assert (await lab.admin.get("/v1/groups/g1"))["name"] == "g1"
    assert (await raw(url, ssl, "PUT", "/v1/groups/-x", {"machines": [lab.a.component_id]}))[0] == 400
    assert (await raw(url, ssl, "PUT", "/v1/groups/g2", {"machines": ["ef" * 16]}))[0] == 404
    assert (await raw(url, ssl, "PUT", "/v1/groups/g2", {"machines": [], "x": 1}))[0] == 400
    assert (await raw(url, lab.a.ssl, "PUT", "/v1/groups/g2", {"machines": [lab.a.component_id]}))[0] == 403
    assert (await raw(url, ssl, "GET", "/v1/groups/g2"))[0] == 404
    assert await lab.admin.request("DELETE", "/v1/groups/g1") == (200, {"ok": True})
    assert (await raw(url, ssl, "DELETE", "/v1/groups/g1"))[0] == 404
    assert (await lab.admin.get("/v1/groups"))["items"] == []
