"""CS alerts: the pure rules, then the real CS fed by heartbeats over HTTPS (raise, clear, no
duplicate open alert), the paginated admin route and the `drlab alerts` command."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sqlalchemy.exc
from cshelpers import Enrolled, Site, raw

from common import tls
from common.config import HealthConfig
from common.http import ApiClient
from cs.db.models import Alert
from cs.health import rules, windows
from cs.health.windows import Condition
from deploy import cli

DISK1, DISK2 = "d1" * 16, "d2" * 16


def ps_metrics(cache: bool = False, disks: tuple[str, ...] = ()) -> dict[str, Any]:
    """PS heartbeat metrics as ps/service.py sends them (the fields the rules read)."""
    return {"cache_free_pct": 12.5 if cache else 80.0,
            "throttle": {"active": cache, "reason": "cache_free" if cache else "", "since_ns": 1, "refusals": 3,
                         "free_pct": 12.5 if cache else 80.0, "threshold_pct": 20.0},
            "disks": {d: {"backlog_bytes": 5000 if d in disks else 0,
                          "throttle": {"active": d in disks, "reason": "disk_backlog" if d in disks else ""}}
                      for d in (DISK1, DISK2)}}


# -- the rules alone -------------------------------------------------------------------------

CFG = HealthConfig()
NOW = 1_800_000_000 * 10**9


def throttle_due(metrics: dict[str, Any], role: str = "ps") -> list[Condition] | None:
    """The ``ps_throttled`` conditions due at once for a fresh heartbeat; None: the rule did not say."""
    verdict = rules.evaluate(CFG, rules.Subject(role, metrics, NOW, NOW, NOW))
    if rules.PS_THROTTLED not in verdict.codes:
        return None
    return [c for c in windows.track({}, verdict, NOW).due if c.code == rules.PS_THROTTLED]


def test_ps_throttle_conditions() -> None:
    assert throttle_due(ps_metrics()) == []
    [cache] = throttle_due(ps_metrics(cache=True)) or []
    assert (cache.code, cache.severity, cache.disk_id) == ("ps_throttled", "critical", None)
    assert "12.5 % free" in cache.message and "20 %" in cache.message
    both = throttle_due(ps_metrics(cache=True, disks=(DISK2,))) or []
    assert [(c.severity, c.disk_id) for c in both] == [("critical", None), ("warning", DISK2)]
    assert "5000 bytes" in both[1].message


def test_metrics_that_do_not_say_change_nothing() -> None:
    assert throttle_due({}) is None  # an older PS, or no cache yet
    assert throttle_due({"throttle": {"active": "yes"}}) is None
    assert throttle_due(ps_metrics(cache=True), role="mt") is None  # the rule is the PS's
    odd = {"throttle": {"active": False}, "disks": {"not-a-disk": {"throttle": {"active": True}},
                                                    DISK1: "junk", DISK2: {"throttle": {"active": 1}}}}
    assert throttle_due(odd) == []


def test_decide_raises_new_clears_gone_and_never_duplicates() -> None:
    verdict = rules.evaluate(CFG, rules.Subject("ps", ps_metrics(cache=True, disks=(DISK1,)), NOW, NOW, NOW))
    plan = windows.track({}, verdict, NOW)
    c = [x for x in plan.due if x.code == "ps_throttled"]
    codes = frozenset({"ps_throttled"})
    assert windows.decide({}, plan, codes).to_raise == tuple(c)
    both = {("ps_throttled", None): "critical", ("ps_throttled", DISK1): "warning"}
    assert windows.decide(both, plan, codes) == windows.Decision((), ())
    assert windows.decide({("ps_throttled", None): "critical"}, plan, codes).to_raise == (c[1],)
    calm = windows.track({}, rules.evaluate(CFG, rules.Subject("ps", ps_metrics(), NOW, NOW, NOW)), NOW)
    assert windows.decide(both, calm, codes) == windows.Decision((), (("ps_throttled", None), ("ps_throttled", DISK1)))
    assert windows.decide(both, calm, frozenset()) == windows.Decision((), ())  # codes not owned: untouched


# -- the CS over HTTPS -----------------------------------------------------------------------


async def beat(member: Enrolled, metrics: dict[str, Any]) -> None:
    await member.api.post("/v1/heartbeat", {"metrics": metrics})


async def page(site: Site, **params: Any) -> dict[str, Any]:
    api = ApiClient(site.env.url, tls.client_context(site.env.admin_files), timeout_s=15.0)
    try:
        return dict(await api.get("/v1/alerts", params=params))
    finally:
        await api.close()


async def listed(site: Site, **params: Any) -> list[dict[str, Any]]:
    return list((await page(site, **params))["items"])


@pytest.mark.timeout(60)
async def test_heartbeats_raise_and_clear_ps_throttle_alerts_without_duplicates(site: Site) -> None:
    ps, ps2 = await site.ps("ps1"), await site.ps("ps2", {"data": 19444})
    await beat(ps, ps_metrics())
    assert await listed(site) == []
    for _ in range(3):  # throttled for several heartbeats: one open alert
        await beat(ps, ps_metrics(cache=True))
    [a] = await listed(site, active=1)
    assert (a["code"], a["severity"], a["source_id"], a["source_host"], a["disk_id"], a["active"]) == (
        "ps_throttled", "critical", ps.component_id, "ps1", None, True)
    assert a["cleared_ns"] is None and a["raised_ns"] > 0
    await beat(ps, ps_metrics(cache=True, disks=(DISK1,)))
    await beat(ps2, ps_metrics(disks=(DISK1,)))  # another PS, same disk id: its own alert
    opened = await listed(site, active=1)
    assert sorted((x["source_host"], x["disk_id"] or "", x["severity"]) for x in opened) == [
        ("ps1", "", "critical"), ("ps1", DISK1, "warning"), ("ps2", DISK1, "warning")]
    await beat(ps, {"uptime_s": 5})  # metrics without a throttle section say nothing: no change
    assert len(await listed(site, active=1)) == 3

    await beat(ps, ps_metrics())  # the throttle lifted
    assert [(x["source_host"], x["disk_id"]) for x in await listed(site, active=1)] == [("ps2", DISK1)]
    cleared = await listed(site, active=0)
    assert len(cleared) == 2 and all(x["cleared_ns"] >= x["raised_ns"] and not x["active"] for x in cleared)
    await beat(ps, ps_metrics(cache=True))  # throttled again: a new alert, the old one stays cleared
    everything = await listed(site)
    assert len(everything) == 4 and everything[0]["active"] and everything[0]["alert_id"] > a["alert_id"]
    assert [x["alert_id"] for x in everything] == sorted((x["alert_id"] for x in everything), reverse=True)


@pytest.mark.timeout(60)
async def test_only_ps_heartbeats_feed_the_throttle_rule(site: Site) -> None:
    mt = await site.mt()
    agent, _ = await site.agent()
    for member in (mt, agent):
        await beat(member, ps_metrics(cache=True, disks=(DISK1,)))
    assert await listed(site) == []


@pytest.mark.timeout(60)
async def test_pages_follow_next_until_null(site: Site) -> None:
    ps = await site.ps()
    for _ in range(3):  # 3 raised and cleared + 1 open = 4 alerts
        await beat(ps, ps_metrics(cache=True))
        await beat(ps, ps_metrics())
    await beat(ps, ps_metrics(cache=True))
    first = await page(site, limit=3)
    assert len(first["items"]) == 3 and first["next"] == str(first["items"][-1]["alert_id"])
    rest = await page(site, limit=3, before=first["next"])
    assert len(rest["items"]) == 1 and rest["next"] is None
    ids = [x["alert_id"] for x in first["items"] + rest["items"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 4


@pytest.mark.timeout(60)
async def test_bad_queries_and_callers_are_refused(site: Site) -> None:
    ps = await site.ps()
    url, admin = site.env.url, site.env.admin_files
    ctx = tls.client_context(admin)
    for query in ("active=2", "active=yes", "limit=0", "limit=1001", "limit=x", "before=-1", "before=abc",
                  "page=2"):
        status, body = await raw(url, ctx, "GET", f"/v1/alerts?{query}")
        assert status == 400 and body["code"] == "bad_request", query
    assert (await raw(url, ps.ssl, "GET", "/v1/alerts"))[0] == 403
    assert (await raw(url, tls.client_context(None, ca_pem=(admin.directory / "ca.pem").read_bytes()),
                      "GET", "/v1/alerts"))[0] == 401


@pytest.mark.timeout(60)
async def test_the_database_holds_one_open_alert_per_key(site: Site) -> None:
    ps = await site.ps()
    await beat(ps, ps_metrics(cache=True))
    state = site.env.service.state
    assert state is not None
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        async with state.db.write() as session:
            session.add(Alert(code="ps_throttled", severity="critical", source_id=ps.component_id, disk_id=None,
                              message="duplicate", raised_ns=1, cleared_ns=None))
    async with state.db.write() as session:  # a cleared one beside the open one is fine
        session.add(Alert(code="ps_throttled", severity="critical", source_id=ps.component_id, disk_id=None,
                          message="old", raised_ns=1, cleared_ns=2))
    assert len(await listed(site)) == 2


@pytest.mark.timeout(60)
async def test_drlab_alerts_prints_a_table(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    ps = await site.ps()
    await beat(ps, ps_metrics(cache=True, disks=(DISK2,)))
    base = ["--cs-url", site.env.url, "--admin-dir", str(site.env.admin_files.directory)]
    capsys.readouterr()
    assert await asyncio.to_thread(cli.main, [*base, "alerts"]) == 0
    out = capsys.readouterr().out
    assert out.count("ps_throttled") == 2 and "critical" in out and DISK2 in out and "| ps1 " in out
    await beat(ps, ps_metrics())
    assert await asyncio.to_thread(cli.main, [*base, "alerts"]) == 0
    assert "ps_throttled" not in capsys.readouterr().out
    assert await asyncio.to_thread(cli.main, [*base, "--json", "alerts", "--all", "--limit", "1"]) == 0
    [item] = json.loads(capsys.readouterr().out)
    assert item["code"] == "ps_throttled" and item["active"] is False
