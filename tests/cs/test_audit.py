"""The audit log: a row per state change, in the change's transaction, with its actor; secrets
redacted; rolled-back changes leave none; ``GET /v1/audit`` pages and ``drlab audit`` prints it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Site, raw
from sqlalchemy import select, update

from common import errors
from cs import audit
from cs.db.engine import Database
from cs.db.models import Policy
from cs.db.models import Site as SiteRow
from cs.db.models_access import AuditEvent


@pytest.fixture
async def db(tmp_path: Path, new_db_url: Any) -> AsyncIterator[Database]:
    database = Database(await new_db_url() or f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}")  # both engines
    await database.upgrade()
    try:
        yield database
    finally:
        await database.close()


async def rows(db: Database, entity: str | None = None) -> list[AuditEvent]:
    async with db.read() as session:
        stmt = select(AuditEvent).order_by(AuditEvent.audit_id)
        if entity is not None:
            stmt = stmt.where(AuditEvent.entity == entity)
        return list((await session.scalars(stmt)).all())


def test_secret_columns_are_recognised() -> None:
    assert audit.is_secret("accounts", "password_enc") and audit.is_secret("disks", "key_b64")
    assert audit.is_secret("operators", "pw_hash_b64") and audit.is_secret("meta", "value")
    assert not audit.is_secret("disks", "key_epoch") and not audit.is_secret("components", "cert_serial")


async def test_orm_changes_leave_rows_with_actor_and_old_new_values(db: Database) -> None:
    now = time.time_ns()
    async with db.write() as session:
        session.add(SiteRow(name="paris", kind="on-prem", description="", created_ns=now, updated_ns=now))
    with audit.acting_as("admin:alice"):
        async with db.write() as session:
            site = await session.get(SiteRow, "paris")
            assert site is not None
            site.kind, site.updated_ns = "cloud", now + 1  # updated_ns alone is not a change worth a row
    async with db.write() as session:
        site = await session.get(SiteRow, "paris")
        site.updated_ns = now + 2  # only a volatile column: no row
    async with db.write() as session:
        await session.delete(await session.get(SiteRow, "paris"))
    log = await rows(db, "sites")
    assert [(r.action, r.actor, r.entity_id) for r in log] == [
        ("create", "system", "paris"), ("update", "admin:alice", "paris"), ("delete", "system", "paris")]
    assert log[0].changes["kind"] == [None, "on-prem"] and "name" not in log[0].changes
    assert log[1].changes == {"kind": ["on-prem", "cloud"]}
    assert log[2].changes["kind"] == ["cloud", None]


async def test_a_rolled_back_change_leaves_no_row(db: Database) -> None:
    now = time.time_ns()
    with pytest.raises(errors.Conflict):
        async with db.write() as session:
            session.add(SiteRow(name="lyon", kind="on-prem", description="", created_ns=now, updated_ns=now))
            await session.flush()  # written, audited, then rolled back with the change
            raise errors.Conflict("changed my mind")
    assert await rows(db) == []
    async with db.read() as session:
        assert await session.get(SiteRow, "lyon") is None


async def test_bulk_statements_are_audited(db: Database) -> None:
    now = time.time_ns()
    async with db.write() as session:
        session.add(Policy(name="p1", rpo_threshold_s=60, retention_window_s=3600, app_consistent_interval_s=0,
                           crash_consistent_interval_s=None, multi_machine_consistency=False, created_ns=now,
                           updated_ns=now))
    with audit.acting_as("admin:bob"):
        async with db.write() as session:
            result = await session.execute(update(Policy).where(Policy.name == "p1").values(rpo_threshold_s=120))
            assert result.rowcount == 1  # type: ignore[attr-defined]
    log = await rows(db, "policies")
    assert [(r.action, r.actor) for r in log] == [("create", "system"), ("update", "admin:bob")]
    assert log[1].changes == {"rpo_threshold_s": [60, 120]}


# -- through the API --------------------------------------------------------------------------


async def audit_page(env: Any, **params: Any) -> dict[str, Any]:
    return dict(await env.admin._api.get("/v1/audit", params=params))


def throttled() -> dict[str, Any]:
    return {"cache_free_pct": 12.5, "throttle": {"active": True, "reason": "cache_free", "since_ns": 1,
                                                 "refusals": 3, "free_pct": 12.5, "threshold_pct": 20.0}}


async def test_protect_failover_alert_and_policy_change_leave_audit_rows(site: Site) -> None:
    env = site.env
    ps = await site.ps()
    mt = await site.mt()
    agent, names = await site.agent()
    disk_id = names["disk0"]
    me = await env.admin._api.get("/v1/whoami")
    admin = f"admin:{me['name']}"
    await env.admin.protect(agent.component_id)
    [machine] = (await audit_page(env, entity="machines"))["items"]
    assert (machine["action"], machine["entity_id"], machine["actor"]) == ("create", agent.component_id, admin)
    assert machine["changes"]["policy_name"] == [None, "default"]
    [disk] = [r for r in (await audit_page(env, entity="disks", entity_id=disk_id))["items"] if r["action"] == "update"]
    assert disk["changes"]["mt_id"] == [None, mt.component_id] and disk["changes"]["ps_id"] == [None, ps.component_id]
    assert disk["changes"]["key_b64"] == [None, "<redacted>"] and disk["changes"]["state"][1] == "enabling"
    [moved] = (await env.admin._api.get(f"/v1/disks/{disk_id}/assignments"))["items"]
    assert (moved["ps_id_from"], moved["ps_id_to"], moved["mt_id_to"], moved["actor"]) == (
        None, ps.component_id, mt.component_id, admin)

    job_id = await env.admin.failover(disk_id, "latest")
    await mt.api.post(f"/v1/jobs/{job_id}/result", {"state": "failed", "error": "no points yet"})
    job_rows = (await audit_page(env, entity="jobs", entity_id=job_id))["items"]
    assert [(r["action"], r["actor"]) for r in job_rows] == [("update", f"mt:{mt.component_id}"),
                                                              ("create", admin)]
    assert job_rows[0]["changes"]["state"] == ["queued", "failed"]

    await ps.api.post("/v1/heartbeat", {"metrics": throttled()})
    [alert] = (await audit_page(env, entity="alerts"))["items"]
    assert alert["action"] == "create" and alert["actor"] in ("system", f"ps:{ps.component_id}")
    assert alert["changes"]["code"] == [None, "ps_throttled"]

    await env.admin._api.request("PATCH", "/v1/policies/default", json_body={"rpo_threshold_s": 600})
    [change] = [r for r in (await audit_page(env, entity="policies"))["items"] if r["action"] == "update"]
    assert change["changes"] == {"rpo_threshold_s": [3600, 600]} and change["actor"] == admin


async def test_a_refused_change_leaves_no_audit_row(site: Site) -> None:
    env = site.env
    await site.ps()
    await site.mt()
    agent, _ = await site.agent()
    await env.admin.protect(agent.component_id)
    await env.admin._api.post("/v1/policies", {"name": "gold", "rpo_threshold_s": 300})
    before = (await audit_page(env, limit=1))["items"][0]["audit_id"]
    unknown = "f" * 32  # the first machine moves, the second is unknown: the whole change rolls back
    with pytest.raises(errors.DrlabError):
        await env.admin._api.post("/v1/policies/gold/assign", {"machines": [agent.component_id, unknown]})
    assert (await audit_page(env, limit=1))["items"][0]["audit_id"] == before
    machine = await env.admin._api.get(f"/v1/machines/{agent.component_id}")
    assert machine["policy"] == "default"


async def test_audit_pages_and_refuses_bad_queries(site: Site) -> None:
    env = site.env
    for i in range(3):
        await env.admin._api.post("/v1/sites", {"name": f"s{i}", "kind": "on-prem"})
    first = await audit_page(env, entity="sites", limit=2)
    assert [r["entity_id"] for r in first["items"]] == ["s2", "s1"] and first["next"]
    rest = await audit_page(env, entity="sites", limit=2, cursor=first["next"])
    assert [r["entity_id"] for r in rest["items"]] == ["s0"] and rest["next"] is None
    for query in ("limit=0", "cursor=x", "colour=red", "entity=Bad!"):
        status, body = await raw(env.url, env.admin._api._ssl, "GET", f"/v1/audit?{query}")
        assert (status, body["code"]) == (400, "bad_request"), query
