"""``GET /metrics`` on the CS: Prometheus text from the database (heartbeat age, RPO, jobs, alerts),
for the admin certificate and operator sessions only (401 without credentials, 403 for components)."""

from __future__ import annotations

import ssl
import time
from typing import Any

import aiohttp
from cshelpers import Enrolled, Site, anonymous
from ophelpers import call, is_error, operations
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from common import tls
from cs.db.models import Alert, Disk

PASSWORD = "correct horse battery"


async def scrape(site: Site, ctx: ssl.SSLContext, token: str | None = None) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.get(site.env.url + "/metrics", headers=headers) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


async def beat(member: Enrolled, metrics: dict[str, Any] | None = None) -> None:
    await member.api.post("/v1/heartbeat", {"metrics": metrics or {}})


async def test_the_admin_scrapes_heartbeat_age_rpo_jobs_and_alerts(site: Site) -> None:
    mt = await site.mt()
    ps = await site.ps()
    agent, disks = await site.agent("m1")
    disk_id = disks["disk0"]
    state = site.env.service.state
    async with state.db.write() as session:
        for disk in (await session.scalars(select(Disk))).all():
            disk.mt_id, disk.state = mt.component_id, "protected"
        session.add(Alert(code="ps_cpu", severity="critical", source_id=ps.component_id, disk_id=None,
                          message="busy", raised_ns=time.time_ns()))
    point = time.time_ns() - 7 * 10**9
    await beat(mt, {"disks": {disk_id: {"latest_point_ns": point}}})
    await beat(ps)
    status, ctype, text = await scrape(site, tls.client_context(site.env.admin_files))
    assert status == 200 and ctype.startswith("text/plain"), text
    got = samples(text)
    ages = {(lab["role"], lab["host"]): v for lab, v in got["drlab_component_heartbeat_age_seconds"]}
    assert 0.0 <= ages[("mt", "mt1")] < 5.0 and 0.0 <= ages[("ps", "ps1")] < 5.0
    assert ("agent", "m1") in ages  # no heartbeat yet: its age counts from the registration
    rpo = {(lab["machine"], lab["disk"]): v for lab, v in got["drlab_disk_rpo_seconds"]}
    assert 7.0 <= rpo[(agent.component_id, disk_id)] < 30.0
    assert {lab["disk"]: v for lab, v in got["drlab_disk_rpo_threshold_seconds"]}[disk_id] > 0
    assert {lab["severity"]: v for lab, v in got["drlab_alerts_active"]} == {"warning": 0.0, "critical": 1.0}
    assert {lab["state"]: v for lab, v in got["drlab_disks"]} == {"protected": 1.0}
    assert {lab["role"]: v for lab, v in got["drlab_components"]} == {"agent": 1.0, "mt": 1.0, "ps": 1.0}
    assert "drlab_jobs" in {f.name for f in text_string_to_metric_families(text)}


async def test_metrics_refuse_anonymous_and_component_callers_and_take_operator_sessions(site: Site) -> None:
    status, _, body = await scrape(site, anonymous(site.env))
    assert status == 401 and '"unauthorized"' in body
    agent, _ = await site.agent("m1")
    ps = await site.ps()
    for member in (agent, ps):
        status, _, body = await scrape(site, member.ssl)
        assert status == 403 and '"forbidden"' in body, (member.role, body)
    status, _, body = await scrape(site, anonymous(site.env), token="not-a-session")
    assert status == 401
    admin = tls.client_context(site.env.admin_files)
    status, created, _ = await call(site.env.url, admin, "POST", "/v1/operators",
                                    {"name": "watcher", "role": "reader", "password": PASSWORD})
    assert status == 201, created
    status, login, _ = await call(site.env.url, anonymous(site.env), "POST", "/v1/login",
                                  {"name": "watcher", "password": PASSWORD})
    assert status == 200, login
    status, _, text = await scrape(site, anonymous(site.env), token=login["token"])
    assert status == 200 and "drlab_components" in text
    status, body, _ = await call(site.env.url, anonymous(site.env), "POST", "/metrics", token=login["token"])
    assert status == 403 and is_error(body)  # a reader only reads
    status, body, _ = await call(site.env.url, admin, "POST", "/metrics")
    assert status == 405 and is_error(body)


async def test_metrics_are_not_a_json_route_of_the_openapi_document(site: Site) -> None:
    status, doc, _ = await call(site.env.url, anonymous(site.env), "GET", "/v1/openapi.json")
    assert status == 200
    assert all(op.template != "/metrics" for op in operations(doc))
