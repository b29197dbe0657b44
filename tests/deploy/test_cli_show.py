"""``drlab site|account|group show``, ``drlab disk assignments|verify-show`` (deploy/cli_show.py) against
a real CS on loopback: the readable table, ``--json`` the CS's answer, an unknown name or id exit 2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from deploy.cli_show import fields
from tests.cs.cshelpers import Site
from tests.deploy.admincli import drlab, json_out

UNKNOWN_ID = "0" * 32


@pytest.fixture
async def site(cs_env: Any, tmp_path: Path) -> AsyncIterator[Site]:
    s = Site(cs_env, tmp_path)
    try:
        yield s
    finally:
        await s.close()


def test_fields_table_reads_lists_and_none() -> None:
    out = fields({"name": "g1", "machines": ["a", "b"], "gone": None, "extra": {"k": 1}})
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("|")]
    assert rows == [["field", "value"], ["name", "g1"], ["machines", "a, b"], ["gone", "-"], ["extra", '{"k": 1}']]


@pytest.mark.timeout(60)
async def test_site_show_lists_its_members_and_an_unknown_site_exits_2(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    env = site.env
    ps = await site.ps("ps1")
    await env.admin.ensure_site("onprem1", "on-prem")
    await env.admin.site_members("onprem1", [ps.component_id])
    assert await drlab(env, "site", "show", "onprem1") == 0
    out = capsys.readouterr().out
    assert "onprem1" in out and ps.component_id in out and "ps1" in out
    assert await drlab(env, "--json", "site", "show", "onprem1") == 0
    doc = json_out(capsys.readouterr().out)
    assert doc["site"]["name"] == "onprem1" and [c["host_id"] for c in doc["components"]] == ["ps1"]
    assert await drlab(env, "site", "show", "nowhere") == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.timeout(60)
async def test_account_show_has_no_password_and_an_unknown_account_exits_2(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    env = site.env
    await env.admin.api.post("/v1/accounts", {"name": "vcenter", "username": "root", "password": "s3cret-pw"})
    assert await drlab(env, "account", "show", "vcenter") == 0
    out = capsys.readouterr().out
    assert "vcenter" in out and "root" in out and "s3cret-pw" not in out
    assert await drlab(env, "--json", "account", "show", "vcenter") == 0
    assert json_out(capsys.readouterr().out)["username"] == "root"
    assert await drlab(env, "account", "show", "nobody") == 2
    err = capsys.readouterr().err
    assert err.startswith("drlab: error:") and "nobody" in err


@pytest.mark.timeout(60)
async def test_group_show_by_name_and_an_unknown_group_exits_2(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    env = site.env
    m1, _ = await site.agent("m1")
    m2, _ = await site.agent("m2")
    await env.admin.api.put("/v1/groups/app", {"machines": [m1.component_id, m2.component_id]})
    assert await drlab(env, "group", "show", "app") == 0
    out = capsys.readouterr().out
    assert m1.component_id in out and m2.component_id in out
    assert await drlab(env, "--json", "group", "show", "app") == 0
    assert sorted(json_out(capsys.readouterr().out)["machines"]) == sorted([m1.component_id, m2.component_id])
    assert await drlab(env, "group", "show", "missing") == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.timeout(60)
async def test_disk_assignments_show_the_protect_and_an_unknown_disk_exits_2(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    env = site.env
    ps, mt = await site.ps("ps1"), await site.mt("mt1")
    machine, disks = await site.agent("m1")
    disk_id = disks["disk0"]
    await env.admin.protect(machine.component_id, ps_id=ps.component_id, mt_id=mt.component_id)
    assert await drlab(env, "--json", "disk", "assignments", disk_id) == 0
    items = json_out(capsys.readouterr().out)
    assert items and items[0]["ps_id_to"] == ps.component_id and items[0]["mt_id_to"] == mt.component_id
    assert await drlab(env, "disk", "assignments", disk_id) == 0
    out = capsys.readouterr().out
    assert "| ps_id_to" in out and ps.component_id in out and mt.component_id in out
    assert await drlab(env, "disk", "assignments", UNKNOWN_ID) == 2
    assert UNKNOWN_ID in capsys.readouterr().err
    assert await drlab(env, "disk", "assignments", disk_id, "--limit", "0") == 2  # refused by the CS
    assert "limit" in capsys.readouterr().err


@pytest.mark.timeout(60)
async def test_verify_show_by_id_and_an_unknown_verify_exits_2(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    env = site.env
    ps, mt = await site.ps("ps1"), await site.mt("mt1")
    machine, disks = await site.agent("m1")
    disk_id = disks["disk0"]
    await env.admin.protect(machine.component_id, ps_id=ps.component_id, mt_id=mt.component_id)
    started = await env.admin.api.post(f"/v1/disks/{disk_id}/verify", {})
    assert await drlab(env, "disk", "verify-show", disk_id, started["verify_id"]) == 0
    out = capsys.readouterr().out
    assert started["verify_id"] in out and started["state"] in out
    assert await drlab(env, "--json", "disk", "verify-show", disk_id, started["verify_id"]) == 0
    assert json_out(capsys.readouterr().out)["verify_id"] == started["verify_id"]
    assert await drlab(env, "disk", "verify-show", disk_id, UNKNOWN_ID) == 2
    assert capsys.readouterr().err.startswith("drlab: error:")
