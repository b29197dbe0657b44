"""The dashboard as the CS serves it: the page and its own files without credentials (and with no
external asset), nothing else under /dashboard; GET /v1/dashboard/rpo behind the login, its query
checked (400, nothing recorded); the RPO figures and their history (pure)."""

from __future__ import annotations

import re
import ssl
from typing import Any

import aiohttp
from cshelpers import Site, anonymous
from ophelpers import call, is_error

from common import tls
from cs import dashboard
from cs.dashboard import rpo
from cs.health.rules import DiskRpo

NS = 1_000_000_000


async def _get(url: str, ctx: ssl.SSLContext) -> tuple[int, str, str]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.get(url) as resp:
            return resp.status, resp.content_type, await resp.text()


async def test_the_page_and_its_files_are_served_without_credentials(site: Site) -> None:
    ctx = anonymous(site.env)
    status, ctype, html = await _get(site.env.url + "/dashboard", ctx)
    assert (status, ctype) == (200, "text/html") and 'id="login"' in html
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sorted(refs) == sorted(f"/dashboard/{name}" for name in dashboard.ASSETS)
    for name, expected in dashboard.ASSETS.items():
        status, ctype, text = await _get(f"{site.env.url}/dashboard/{name}", ctx)
        assert (status, ctype) == (200, expected) and text
        # no external asset: no URL but the SVG namespace, no @import or url() to elsewhere
        assert set(re.findall(r"https?://[^\s\"'`)]+", text)) <= {"http://www.w3.org/2000/svg"}, name
        assert "@import" not in text and "url(" not in text


async def test_other_names_under_dashboard_are_refused(site: Site) -> None:
    status, body, _ = await call(site.env.url, anonymous(site.env), "GET", "/dashboard/secrets.json")
    assert status == 401 and is_error(body)  # not on the allow-list: deny by default
    admin = tls.client_context(site.env.admin_files)
    for name in ("secrets.json", "..%2Fapp.py", "index.htm"):
        status, body, _ = await call(site.env.url, admin, "GET", f"/dashboard/{name}")
        assert status == 404 and is_error(body), name


async def test_rpo_needs_a_login_and_answers_the_machines_and_history(site: Site) -> None:
    url = site.env.url
    status, body, _ = await call(url, anonymous(site.env), "GET", "/v1/dashboard/rpo")
    assert status == 401 and is_error(body)
    await site.agent("m1")  # a machine without protection: no RPO yet
    admin = tls.client_context(site.env.admin_files)
    status, body, _ = await call(url, admin, "GET", "/v1/dashboard/rpo")
    assert status == 200, body
    assert body["machines"] == {} and body["now_ns"] > 0 and body["sample_s"] > 0
    assert [s["rpo_s"] for s in body["history"]] == [{}]  # this call took the first sample
    status, later, _ = await call(url, admin, "GET", "/v1/dashboard/rpo", params={"since_ns": body["now_ns"]})
    assert status == 200 and later["history"] == []  # nothing newer (a sample per second at most)


async def test_rpo_bad_queries_are_400_and_record_nothing(site: Site) -> None:
    admin = tls.client_context(site.env.admin_files)
    for params in ({"since_ns": "-1"}, {"since_ns": "abc"}, {"since_ns": "9" * 21}, {"limit": "5"},
                   {"since_ns": "1", "x": "y"}):
        status, body, _ = await call(site.env.url, admin, "GET", "/v1/dashboard/rpo", params=params)
        assert status == 400 and is_error(body), params
    status, body, _ = await call(site.env.url, admin, "GET", "/v1/dashboard/rpo")
    assert status == 200 and len(body["history"]) == 1  # the refused calls took no sample


def test_machine_rpo_is_its_worst_disk_and_skips_disks_without_points() -> None:
    now = 1_000 * NS
    inputs: dict[str, Any] = {
        "m1": [DiskRpo("d1", now - 5 * NS, 60.0), DiskRpo("d2", now - 12 * NS, 60.0)],
        "m2": [DiskRpo("d3", now + 2 * NS, 30.0)],  # a point stamped after now: RPO 0, not negative
        "m3": [],
    }
    out = rpo.machine_rpos(inputs, now)
    assert out == {"m1": {"rpo_s": 12.0, "threshold_s": 60.0, "disks": {"d1": 5.0, "d2": 12.0}},
                   "m2": {"rpo_s": 0.0, "threshold_s": 30.0, "disks": {"d3": 0.0}}}


def test_history_keeps_a_bounded_ring_with_a_minimum_gap() -> None:
    h = rpo.History(keep=3, min_gap_s=1.0)
    one = {"m1": {"rpo_s": 1.5}}
    assert h.add(10 * NS, one) and not h.add(10 * NS + NS // 2, one)  # too soon
    for i in range(1, 5):
        assert h.add((10 + i) * NS, {"m1": {"rpo_s": float(i)}})
    assert [s["t_ns"] for s in h.since(0)] == [12 * NS, 13 * NS, 14 * NS]  # the oldest went
    assert h.since(13 * NS) == [{"t_ns": 14 * NS, "rpo_s": {"m1": 4.0}}]
