"""Integer query parameters of the audit and dashboard routes (cs/api/audit.py, cs/api/dashboard.py)
go through ``paging.bounded_int``: a huge (5000 digits) or malformed number is a 400 JSON error with a
code, and the refused call changes nothing (no audit row, no RPO sample); good values still work."""

from __future__ import annotations

from typing import Any

import pytest
from cshelpers import Site, raw

HUGE = "9" * 5000
BAD = (HUGE, "abc", "-1", "1.5", "", "١")  # the last: an Arabic-Indic digit (isdigit, not ASCII)


async def get(site: Site, path: str) -> tuple[int, Any]:
    env = site.env
    return await raw(env.url, env.admin._api._ssl, "GET", path)


async def audit_ids(site: Site) -> list[int]:
    status, body = await get(site, "/v1/audit?limit=500")
    assert status == 200, body
    return [r["audit_id"] for r in body["items"]]


def refused(status: int, body: Any, what: str) -> bool:
    return (status == 400 and isinstance(body, dict) and body.get("code") == "bad_request"
            and what in str(body.get("message")))


@pytest.mark.parametrize("param", ["limit", "cursor"])
async def test_audit_refuses_huge_and_malformed_numbers(site: Site, param: str) -> None:
    await site.env.admin._api.post("/v1/sites", {"name": "s0", "kind": "on-prem"})
    before = await audit_ids(site)
    assert before
    for text in BAD:
        status, body = await get(site, f"/v1/audit?{param}={text}")
        assert refused(status, body, param), (text[:10], body)
    assert await audit_ids(site) == before
    status, body = await get(site, f"/v1/audit?limit=1&cursor={before[0] + 1}")
    assert status == 200 and [r["audit_id"] for r in body["items"]] == before[:1]


async def test_assignments_refuse_huge_and_malformed_limits(site: Site) -> None:
    disk = "cd" * 16  # the limit is checked before the disk is looked up
    for text in BAD:
        status, body = await get(site, f"/v1/disks/{disk}/assignments?limit={text}")
        assert refused(status, body, "limit"), (text[:10], body)
    status, body = await get(site, f"/v1/disks/{disk}/assignments?limit=5")
    assert status == 404 and body["code"] == "not_found"


async def test_dashboard_rpo_refuses_huge_and_malformed_since(site: Site) -> None:
    for text in (*BAD, "9" * 20):  # 20 digits: past a signed 64-bit time
        status, body = await get(site, f"/v1/dashboard/rpo?since_ns={text}")
        assert refused(status, body, "since_ns"), (text[:10], body)
    status, body = await get(site, "/v1/dashboard/rpo?since_ns=0")
    assert status == 200 and len(body["history"]) == 1  # the refused calls took no sample
    status, later = await get(site, f"/v1/dashboard/rpo?since_ns={body['now_ns']}")
    assert status == 200 and later["history"] == []
