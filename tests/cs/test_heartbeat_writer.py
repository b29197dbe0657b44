"""Heartbeats on the fast path: group commit (an acknowledged heartbeat is in the database, many
share one transaction, one bad heartbeat fails alone), the known-components cache (unknown
ids refused, a revoked certificate refused at once although its id is cached), /v1/ping and
the CS's frozen startup heap."""

from __future__ import annotations

import asyncio
import gc
import uuid
from typing import Any

import pytest
from cshelpers import Site, anonymous, raw

from common import errors, tls
from cs import alerts, components, service
from cs.db.models import Component


async def stored(env: Any, component_id: str) -> Component:
    async with env.service.state.db.read() as session:
        comp = await session.get(Component, component_id)
    assert comp is not None
    return comp


async def test_an_acknowledged_heartbeat_is_in_the_database(site: Site) -> None:
    ps = await site.ps()
    reply = await ps.api.post("/v1/heartbeat", {"metrics": {"beat": 1, "cache_free_pct": 80.0}})
    assert reply["ok"] is True
    comp = await stored(site.env, ps.component_id)
    assert comp.metrics == {"beat": 1, "cache_free_pct": 80.0} and comp.last_heartbeat is not None
    first = comp.last_heartbeat
    await ps.api.post("/v1/heartbeat", {"metrics": {"beat": 2}})
    comp = await stored(site.env, ps.component_id)
    assert comp.metrics == {"beat": 2} and comp.last_heartbeat is not None and comp.last_heartbeat > first


async def test_concurrent_heartbeats_share_transactions(site: Site, seed: int) -> None:
    members = [await site.agent(f"m{i}") for i in range(6)]
    writer = components.HeartbeatWriter(site.env.service.state)
    writer.start()
    try:
        beats = [(a.component_id, {"beat": n, "seed": seed}) for n in range(10) for a, _ in members]
        await asyncio.gather(*(writer.submit(cid, metrics) for cid, metrics in beats))
    finally:
        await writer.stop()
    assert writer.written == len(beats) == 60
    assert writer.batches < len(beats) // 2  # grouped, not one transaction each
    for agent, _ in members:
        assert (await stored(site.env, agent.component_id)).metrics == {"beat": 9, "seed": seed}


async def test_an_unknown_component_fails_alone(site: Site) -> None:
    agent, _ = await site.agent()
    writer = components.HeartbeatWriter(site.env.service.state)
    writer.start()
    try:
        results = await asyncio.gather(writer.submit(uuid.uuid4().hex, {"x": 1}), writer.submit(agent.component_id,
                                                                                                  {"x": 2}),
                                       return_exceptions=True)
    finally:
        await writer.stop()
    assert isinstance(results[0], errors.Unauthorized) and isinstance(results[1], int)
    assert (await stored(site.env, agent.component_id)).metrics == {"x": 2}


async def test_a_failing_heartbeat_does_not_fail_its_batch(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    bad, _ = await site.agent("bad")
    good, _ = await site.agent("good")
    real, real_many = alerts.observe, alerts.observe_many

    async def observe(session: Any, comp: Component, metrics: dict[str, Any], now_ns: int, **kw: Any) -> None:
        if comp.component_id == bad.component_id:
            raise RuntimeError("rule exploded")
        await real(session, comp, metrics, now_ns, **kw)

    async def observe_many(session: Any, beats: list[tuple[Component, dict[str, Any], int]], **kw: Any) -> None:
        if any(comp.component_id == bad.component_id for comp, _, _ in beats):
            raise RuntimeError("rule exploded")
        await real_many(session, beats, **kw)

    monkeypatch.setattr(alerts, "observe", observe)
    monkeypatch.setattr(alerts, "observe_many", observe_many)
    writer = components.HeartbeatWriter(site.env.service.state)
    writer.start()
    try:
        results = await asyncio.gather(writer.submit(bad.component_id, {"n": 1}),
                                       writer.submit(good.component_id, {"n": 1}), return_exceptions=True)
    finally:
        await writer.stop()
    assert isinstance(results[0], RuntimeError) and isinstance(results[1], int)
    assert (await stored(site.env, good.component_id)).metrics == {"n": 1}
    assert (await stored(site.env, bad.component_id)).metrics == {}  # rolled back with its own transaction


async def test_a_stopped_writer_refuses_with_503(site: Site) -> None:
    agent, _ = await site.agent()
    writer = components.HeartbeatWriter(site.env.service.state)
    writer.start()
    await writer.stop()
    with pytest.raises(errors.Unavailable):
        await writer.submit(agent.component_id, {})


async def test_a_revoked_certificate_is_refused_although_its_id_is_cached(site: Site) -> None:
    agent, _ = await site.agent()
    await agent.api.post("/v1/heartbeat", {"metrics": {}})  # now known to the cache
    status, reply = await raw(site.env.url, tls.client_context(site.env.admin_files), "POST",
                              f"/v1/components/{agent.component_id}/revoke")
    assert status == 200, reply
    status, body = await raw(site.env.url, agent.ssl, "POST", "/v1/heartbeat", {"metrics": {"after": True}})
    assert (status, body["code"]) == (401, "certificate_revoked")
    assert (await stored(site.env, agent.component_id)).metrics == {}


async def test_heartbeat_refuses_bad_bodies_and_the_wrong_role(site: Site) -> None:
    agent, _ = await site.agent()
    status, body = await raw(site.env.url, agent.ssl, "POST", "/v1/heartbeat", {"metrics": [1, 2]})
    assert (status, body["code"]) == (400, "bad_request")
    with pytest.raises(errors.TooLarge):  # the size check, also for a body whose length is unknown
        components.parse_metrics({"metrics": {"x": "y" * components.MAX_METRICS_BYTES}}, None)
    with pytest.raises(errors.TooLarge):
        components.parse_metrics({"metrics": {"x": "\x00" * (components.MAX_METRICS_BYTES // 6 + 1)}}, 100_000)
    assert components.parse_metrics({"metrics": {"x": 1}}, 12) == {"x": 1}
    status, body = await raw(site.env.url, tls.client_context(site.env.admin_files), "POST", "/v1/heartbeat",
                             {"metrics": {}})
    assert status == 403
    assert (await stored(site.env, agent.component_id)).metrics == {}


async def test_ping_needs_a_certificate_and_no_database(site: Site) -> None:
    agent, _ = await site.agent()
    status, body = await raw(site.env.url, anonymous(site.env), "GET", "/v1/ping")
    assert status == 401
    status, body = await raw(site.env.url, agent.ssl, "GET", "/v1/ping")
    assert status == 200 and body["ok"] is True and body["role"] == "agent"
    await site.env.service.state.db.close()  # no database at all: ping still answers
    status, body = await raw(site.env.url, agent.ssl, "GET", "/v1/ping")
    assert status == 200 and body["ok"] is True


async def test_a_running_cs_keeps_its_startup_heap_out_of_the_collector(cs_env: Any) -> None:
    assert gc.get_freeze_count() > 0 and gc.get_threshold() == service.GC_THRESHOLDS
    service.thaw_heap()  # what stop() does
    assert gc.get_freeze_count() == 0 and gc.get_threshold() != service.GC_THRESHOLDS
