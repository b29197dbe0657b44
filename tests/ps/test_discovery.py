"""ps/discovery.py against a real hypervisor and the fake CS: inventory with the fingerprint seen
(trust on first use) or pinned, errors reported (fingerprint mismatch, refused admin credentials,
unreachable), and the per-hypervisor tasks following the settings document."""

from __future__ import annotations

import asyncio

from pshv import HvWorld, hv_item, wait_until

from common.config import PSConfig
from ps.discovery import Discovery, HvItem, parse_hypervisors
from ps.service import PSService
from tests.deploy.hvlab import ADMIN


def item(world: HvWorld, fingerprint: str | None = None, port: int | None = None) -> HvItem:
    raw = hv_item(world, fingerprint)
    if port is not None:
        raw["port"] = port
    return parse_hypervisors({"hypervisors": [raw]})["vc1"]


async def test_inventory_is_reported_with_the_fingerprint_seen_first(world: HvWorld) -> None:
    report = await Discovery(world.client).discover_once(item(world))
    assert report is not None and world.cs.inventories == [("vc1", report)]
    assert report["fingerprint"] == world.hv.fingerprint
    assert [(m["hypervisor"], m["vm"], m["host_id"], m["address"], m["os"], m["power_state"], m["agent_installed"])
            for m in report["machines"]] == [("vc1", "web01", "host-web01", "10.0.0.11", "linux", "on", False),
                                             ("vc1", "db01", "host-db01", "10.0.0.12", "windows", "off", False)]
    assert report["machines"][0]["disks"] == [{"name": "disk0", "size_bytes": 1 << 20},
                                              {"name": "disk1", "size_bytes": 2 << 20}]
    assert ADMIN[1] not in str(world.cs.inventories)
    pinned = await Discovery(world.client).discover_once(item(world, world.hv.fingerprint))
    assert pinned == report


async def test_a_fingerprint_mismatch_is_reported_as_an_error(world: HvWorld) -> None:
    report = await Discovery(world.client).discover_once(item(world, "00" * 32))
    assert report == world.cs.inventories[-1][1]
    assert report["error"]["code"] == "fingerprint_mismatch" and "machines" not in report
    assert world.hv.fingerprint in report["error"]["message"]


async def test_refused_admin_credentials_are_reported_as_an_error(world: HvWorld) -> None:
    world.cs.credentials["vc1"] = {"username": ADMIN[0], "password": "not-it"}
    report = await Discovery(world.client).discover_once(item(world))
    assert report is not None and report["error"]["code"] == "credentials_refused"
    assert "not-it" not in str(report)


async def test_an_unreachable_hypervisor_is_reported_and_missing_credentials_report_nothing(world: HvWorld) -> None:
    report = await Discovery(world.client, timeout_s=2.0).discover_once(item(world, port=1))
    assert report is not None and report["error"]["code"] == "unreachable"
    world.cs.credentials.clear()  # the CS no longer knows the hypervisor: nothing to report
    before = len(world.cs.inventories)
    assert await Discovery(world.client).discover_once(item(world)) is None
    assert len(world.cs.inventories) == before


async def test_tasks_follow_the_settings_document(world: HvWorld) -> None:
    discovery = Discovery(world.client)
    try:
        discovery.apply({"hypervisors": [hv_item(world, seq=1)], "discovery_interval_s": 3600})
        await wait_until(lambda: discovery.reports == 1)
        discovery.apply({"hypervisors": [hv_item(world, seq=1)], "discovery_interval_s": 3600})
        await asyncio.sleep(0.3)
        assert discovery.reports == 1  # the same item: no new discovery before the interval
        discovery.apply({"hypervisors": [hv_item(world, seq=2)], "discovery_interval_s": 3600})
        await wait_until(lambda: discovery.reports == 2)  # "discover now"
        discovery.apply({"hypervisors": [hv_item(world, seq=2)], "discovery_interval_s": 0.2})
        discovery.apply({"hypervisors": [hv_item(world, seq=3)], "discovery_interval_s": 0.2})
        await wait_until(lambda: discovery.reports >= 5)  # the short interval now applies
        discovery.apply({"hypervisors": [], "discovery_interval_s": 0.2})
        await asyncio.sleep(0.1)
        count = discovery.reports
        await asyncio.sleep(0.5)
        assert discovery.reports == count and not discovery.items  # removed: its task is gone
        discovery.apply({"hypervisors": [{"name": "broken"}, hv_item(world, seq=3)]})  # malformed item skipped
        assert list(discovery.items) == ["vc1"]
    finally:
        await discovery.stop()
    assert all(t.done() for t in asyncio.all_tasks() if t.get_name().startswith("discovery-"))


async def test_the_ps_discovers_the_hypervisors_of_its_settings(world: HvWorld) -> None:
    cfg = PSConfig(data_dir=world.ps_identity, cs_url=world.cs_url, data_port=0, heartbeat_interval_s=0.2,
                   settings_wait_s=1.0, retry_max_backoff_s=0.2, request_timeout_s=5.0, cache_max_bytes=1 << 20)
    world.cs.publish({"disks": [], "hypervisors": [hv_item(world)], "discovery_interval_s": 900.0})
    ps = PSService(cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await wait_until(lambda: len(world.cs.inventories) == 1)
        assert world.cs.inventories[0][1]["fingerprint"] == world.hv.fingerprint
        world.cs.publish({"disks": [], "hypervisors": [hv_item(world, world.hv.fingerprint, seq=2)]})
        await wait_until(lambda: len(world.cs.inventories) == 2)
    finally:
        await ps.stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("discovery-") and not t.done()]
