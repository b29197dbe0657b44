"""Component versions at the real CS (both engines): a PS, MT or agent newer than the CS is refused
at registration, re-registration and renewal and nothing is stored; equal or older versions are
accepted and recorded; the upgrade-order warnings are raised and cleared; `drlab components` shows them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Site, raw

from common import __version__, component, errors, tls
from common.http import ApiClient
from deploy import cli

OLDER = "0.0.9"
NEWER = "99.0.0"


async def register(site: Site, role: str, host_id: str, version: str, tag: str = "") -> tuple[str, tls.IdentityFiles]:
    files = tls.IdentityFiles(site.tmp / f"v-{role}-{host_id}{tag}")
    meta = await component.register(site.env.url, site.env.passphrase, role=role, host_id=host_id,
                                    address="127.0.0.1", ports={"data": 19443}, files=files, version=version)
    return str(meta["component_id"]), files


async def open_alerts(site: Site) -> dict[str, tuple[str, str]]:
    """{source id: (code, message)} of the open upgrade alerts."""
    api = ApiClient(site.env.url, tls.client_context(site.env.admin_files), timeout_s=15.0)
    try:
        items = (await api.get("/v1/alerts", params={"active": "1"}))["items"]
    finally:
        await api.close()
    return {a["source_id"]: (a["code"], a["message"]) for a in items if a["code"] in ("upgrade_order",
                                                                                     "version_mismatch")}


@pytest.mark.parametrize("role", ["ps", "mt", "agent"])
async def test_a_component_newer_than_the_cs_is_refused_and_nothing_is_stored(site: Site, role: str) -> None:
    with pytest.raises(errors.Conflict) as caught:
        await register(site, role, f"{role}-new", NEWER)
    assert caught.value.code == "component_newer_than_cs"
    assert NEWER in caught.value.message and __version__ in caught.value.message
    assert "configuration server first" in caught.value.message
    assert not tls.IdentityFiles(site.tmp / f"v-{role}-{role}-new").exists()
    assert await site.env.admin.components() == []


async def test_a_malformed_version_is_a_400_and_nothing_is_stored(site: Site) -> None:
    for bad in ("test", "1.2", "01.2.3", "1.2.3.4", ""):
        with pytest.raises(errors.BadRequest):
            await register(site, "ps", "ps-bad", bad)
    assert await site.env.admin.components() == []


async def test_equal_and_older_versions_are_accepted_and_shown(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    ps_id, _ = await register(site, "ps", "ps-eq", __version__)
    mt_id, _ = await register(site, "mt", "mt-old", OLDER)
    agent_id, _ = await register(site, "agent", "m-old", OLDER)
    shown = {c["component_id"]: c["version"] for c in await site.env.admin.components()}
    assert shown == {ps_id: __version__, mt_id: OLDER, agent_id: OLDER}
    base = ["--cs-url", site.env.url, "--admin-dir", str(site.env.admin_files.directory)]
    capsys.readouterr()
    assert await asyncio.to_thread(cli.main, [*base, "components"]) == 0
    out = capsys.readouterr().out
    assert "version" in out and OLDER in out and __version__ in out


async def test_re_registering_newer_is_refused_and_keeps_the_old_entry(site: Site) -> None:
    ps_id, _ = await register(site, "ps", "ps-up", OLDER)
    with pytest.raises(errors.Conflict):
        await register(site, "ps", "ps-up", NEWER, tag="-again")
    [row] = await site.env.admin.components()
    assert (row["component_id"], row["version"]) == (ps_id, OLDER)


async def test_renewal_refuses_a_newer_version_and_records_an_equal_one(site: Site) -> None:
    ps_id, files = await register(site, "ps", "ps-renew", OLDER)
    csr = tls.make_csr(tls.new_key(), "ps", "ps-renew").decode()
    ctx = tls.client_context(files)
    status, body = await raw(site.env.url, ctx, "POST", "/v1/certificate/renew", {"csr_pem": csr, "version": NEWER})
    assert (status, body["code"]) == (409, "component_newer_than_cs")
    status, body = await raw(site.env.url, ctx, "POST", "/v1/certificate/renew", {"csr_pem": csr, "version": "x"})
    assert status == 400
    assert [c["version"] for c in await site.env.admin.components()] == [OLDER]
    status, body = await raw(site.env.url, ctx, "POST", "/v1/certificate/renew",
                             {"csr_pem": csr, "version": __version__})
    assert status == 200 and body["component_id"] == ps_id
    assert [c["version"] for c in await site.env.admin.components()] == [__version__]


async def test_upgrade_order_alerts_are_raised_and_cleared(site: Site, tmp_path: Path) -> None:
    ps_id, _ = await register(site, "ps", "ps-o", __version__)
    mt_id, _ = await register(site, "mt", "mt-o", __version__)
    assert await open_alerts(site) == {}

    await register(site, "ps", "ps-o", OLDER, tag="-1")  # a PS rolled back: older than the CS and the MT
    alerts: dict[str, Any] = await open_alerts(site)
    assert alerts[ps_id][0] == "version_mismatch" and "upgrade this process server" in alerts[ps_id][1]
    assert alerts[mt_id][0] == "upgrade_order" and "upgrade the process servers" in alerts[mt_id][1]

    await register(site, "mt", "mt-o", OLDER, tag="-1")  # now the MT differs from the CS, behind the PS
    alerts = await open_alerts(site)
    assert alerts[mt_id][0] == "version_mismatch" and "process servers to" in alerts[mt_id][1]

    await register(site, "ps", "ps-o", __version__, tag="-2")  # CS, then PS ...
    alerts = await open_alerts(site)
    assert set(alerts) == {mt_id} and "upgrade this master target" in alerts[mt_id][1]

    await register(site, "mt", "mt-o", __version__, tag="-2")  # ... then MT: consistent, all cleared
    assert await open_alerts(site) == {}


async def test_a_heartbeat_reports_the_version_after_an_upgrade_in_place(site: Site) -> None:
    ps_id, files = await register(site, "ps", "ps-hb", OLDER)
    mt_id, _ = await register(site, "mt", "mt-hb", __version__)
    assert (await open_alerts(site))[ps_id][0] == "version_mismatch"
    ctx = tls.client_context(files)
    status, body = await raw(site.env.url, ctx, "POST", "/v1/heartbeat", {"metrics": {}, "version": NEWER})
    assert (status, body["code"]) == (409, "component_newer_than_cs")
    status, body = await raw(site.env.url, ctx, "POST", "/v1/heartbeat", {"metrics": {}, "version": "0.1"})
    assert status == 400
    rows = {c["component_id"]: c for c in await site.env.admin.components()}
    assert rows[ps_id]["version"] == OLDER and rows[ps_id]["last_heartbeat"] is None  # refused: nothing stored
    status, _ = await raw(site.env.url, ctx, "POST", "/v1/heartbeat", {"metrics": {}, "version": __version__})
    assert status == 200
    rows = {c["component_id"]: c for c in await site.env.admin.components()}
    assert rows[ps_id]["version"] == __version__ and rows[ps_id]["last_heartbeat"]
    assert await open_alerts(site) == {} and mt_id in rows
