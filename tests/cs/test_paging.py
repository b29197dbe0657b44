"""Every list route pages: ``limit`` (bounded) and ``cursor`` -> ``{items, next}``; cursors are opaque,
checked, and pages neither repeat nor skip rows."""

from __future__ import annotations

from typing import Any

import pytest
from cshelpers import Site
from ophelpers import ID, call, is_error, operations

from common import errors, tls
from cs.api import paging
from cs.client import all_pages


def test_cursors_round_trip_and_refuse_garbage() -> None:
    assert paging.decode(paging.encode([12, "ab"])) == (12, "ab")
    for bad in ("!!", "e30", paging.encode([]), paging.encode([True]), paging.encode([1.5]), "A" * 2000):
        with pytest.raises(errors.BadRequest):
            paging.decode(bad)
    assert paging.parse({}).limit == paging.DEFAULT_PAGE
    for limit in ("0", "1001", "-1", "x", "1e3", "٣"):
        with pytest.raises(errors.BadRequest):
            paging.parse({"limit": limit})


async def _pages(site: Site, path: str, limit: int) -> list[list[dict[str, Any]]]:
    ctx = tls.client_context(site.env.admin_files)
    pages, params = [], {"limit": str(limit)}
    while True:
        status, body, _ = await call(site.env.url, ctx, "GET", path, params=params)
        assert status == 200, body
        pages.append(body["items"])
        if body["next"] is None:
            return pages
        params["cursor"] = body["next"]


async def test_components_disks_and_groups_page_without_repeats(site: Site) -> None:
    agents = [await site.agent(f"m{i}", {"d0": 1 << 20, "d1": 1 << 20}) for i in range(5)]
    ctx = tls.client_context(site.env.admin_files)
    for i, (agent, _) in enumerate(agents):
        status, _, _ = await call(site.env.url, ctx, "PUT", f"/v1/groups/g{i}", {"machines": [agent.component_id]})
        assert status == 200
    comps = await _pages(site, "/v1/components", 2)
    assert [len(p) for p in comps] == [2, 2, 1]
    ids = [c["component_id"] for p in comps for c in p]
    assert sorted(ids) == sorted(a.component_id for a, _ in agents)
    disks = [d for p in await _pages(site, "/v1/disks", 3) for d in p]
    assert len(disks) == 10 and len({d["disk_id"] for d in disks}) == 10
    assert [(d["machine_id"], d["name"]) for d in disks] == sorted((d["machine_id"], d["name"]) for d in disks)
    groups = [g["name"] for p in await _pages(site, "/v1/groups", 4) for g in p]
    assert groups == [f"g{i}" for i in range(5)]
    assert len(await site.env.admin.disks()) == 10  # the admin client follows next
    api = site.members[0].api.__class__(site.env.url, ctx)
    try:
        assert len(await all_pages(api, "/v1/disks", page_size=3, most=7)) == 7
    finally:
        await api.close()


async def test_list_routes_refuse_bad_paging(site: Site) -> None:
    """Every GET of the OpenAPI document that takes ``limit`` and ``cursor`` (the list routes)."""
    ctx = tls.client_context(site.env.admin_files)
    doc = (await call(site.env.url, ctx, "GET", "/v1/openapi.json"))[1]
    lists = [op.path for op in operations(doc) if op.method == "GET"
             and {p["name"] for p in op.doc["parameters"] if p["in"] == "query"} >= {"limit", "cursor"}]
    assert set(lists) >= {"/v1/components", "/v1/disks", "/v1/groups", "/v1/bookmarks", "/v1/operators",
                          "/v1/alerts", "/v1/jobs"}
    for path in lists:
        if "{" in path or ID in path:
            continue
        for params in ({"limit": "0"}, {"limit": "100000"}, {"cursor": "%%%"}, {"bogus": "1"}):
            status, body, _ = await call(site.env.url, ctx, "GET", path, params=params)
            assert status == 400 and is_error(body), (path, params, body)
        status, body, _ = await call(site.env.url, ctx, "GET", path, params={"limit": "1"})
        assert status == 200 and set(body) >= {"items", "next"}, (path, body)
