"""The documented process-server tasks, in order, as an operator runs them — every command a
``drlab`` process, every daemon a process: install and register a scale-out PS from the command
line (a wrong passphrase first: nothing left), start it as a service, load-balance a machine onto it
under load, route its uploads through an authenticating HTTP CONNECT proxy and back, check the
connection end to end, re-register it and restart it (same id, cache kept), refuse its
decommission while it serves a machine, switch the machine back, remove it, uninstall it.
The oracle checks the machine's latest point; then the machine's failover properties are set
(a target name breaking the rule first). docs/PS_TASKS.md maps each documented
task to these commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from deploy.drills.psswitch import oracle_latest
from deploy.lab import HEARTBEAT_INTERVAL_S, Lab
from deploy.scenario import Scenario
from tests.integration.conftest import LabMaker, run_cli, until
from tests.integration.test_agent_crash_drills import disk_entry
from tests.integration.test_ps_switch import components, start
from tests.ps.psproxy import ConnectProxy


async def cli(lab: Lab, *args: str, ok: bool | None = True, stdin: str | None = None) -> Any:
    return await asyncio.to_thread(run_cli, lab, *args, ok=ok, input_text=stdin)


def exists(path: Path) -> bool:
    return path.exists()


def text_of(path: Path) -> str:
    return path.read_text()


async def started_twice(log_file: Path) -> bool:
    """The installed PS logs JSON lines to DATA/ps.log: two starts (install --start, restart)."""
    log = [json.loads(line) for line in text_of(log_file).splitlines()]
    assert {e["component"] for e in log} == {"ps"}
    return [e["event"] for e in log].count("ps_started") == 2


async def ps_id_of(admin: Any, host_id: str) -> str | None:
    return next((c for c, v in (await components(admin)).items() if v.get("host_id") == host_id), None)


async def under_load(sc: Scenario, seconds: float = 2.0) -> None:
    """A short workload, waited for, then drained to the MT."""
    proc = sc.start_workload(rate_mb_s=3, duration_s=seconds)
    await asyncio.to_thread(sc.finish_workload, proc, 60)
    await sc.wait_drained(60)


async def install_ps3(lab: Lab, data: Path, address: str, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not-the-passphrase\n")
    base = ["ps", "install", "--cs", lab.topology.cs_url, "--dir", str(data), "--address", address,
            "--host-id", "ps3", "--data-port", "9443", "--timeout-s", "10",
            "--set", f"heartbeat_interval_s={HEARTBEAT_INTERVAL_S}", "--set", "settings_wait_s=10"]
    refused = await cli(lab, *base, "--passphrase-file", str(wrong), ok=False)
    assert "passphrase" in refused.stderr and not exists(data)
    out = await cli(lab, *base, "--passphrase-file", str(lab.passphrase_file), "--start")
    assert "started: pid" in out.stdout
    assert f"heartbeat_interval_s = {HEARTBEAT_INTERVAL_S}" in text_of(data / "ps.toml")
    assert "running" in (await cli(lab, "ps", "status", "--dir", str(data))).stdout


async def through_proxy(lab: Lab, sc: Scenario) -> None:
    proxy = ConnectProxy("squid", "proxy-pw-31")
    url = await proxy.start()
    try:
        await cli(lab, "ps", "proxy", "set", "ps3", "--url", url, "--username", "squid", stdin="proxy-pw-31\n")
        await under_load(sc)
        assert proxy.tunnels >= 1 and proxy.bytes_up > 0 and proxy.refused == 0
        await cli(lab, "ps", "proxy", "clear", "ps3")
    finally:
        await proxy.stop()
    sent = proxy.bytes_up
    await under_load(sc)  # direct again: nothing more through the proxy
    assert proxy.bytes_up == sent


@pytest.mark.timeout(240)
async def test_documented_ps_tasks_end_to_end(make_lab: LabMaker, seed: int, tmp_path: Path) -> None:
    lab = make_lab(32)
    sc, admin = await start(lab, 0.1, seed)
    data = tmp_path / "ps3"
    address = lab.topology.pss[0].address.rsplit(".", 1)[0] + ".3"
    try:
        await install_ps3(lab, data, address, tmp_path)
        ps3 = await until("ps3 registered and heartbeating", 30, lambda: ps_id_of(admin, "ps3"))
        assert "ps3" in (await cli(lab, "ps", "list")).stdout
        proc = sc.start_workload(rate_mb_s=3, duration_s=4)
        await cli(lab, "ps", "balance", "ps1", "--to", "ps3", "--machine", "m1", "--wait", "--timeout-s", "90")
        await asyncio.to_thread(sc.finish_workload, proc, 60)
        assert (await disk_entry(admin, sc.disk_id))["ps_id"] == ps3
        await through_proxy(lab, sc)
        checked = await cli(lab, "ps", "check", address, "9443", "--timeout", "30")
        assert "every step passed" in checked.stdout
        await cli(lab, "ps", "reregister", "--dir", str(data), "--passphrase-file", str(lab.passphrase_file))
        assert "started" in (await cli(lab, "ps", "restart", "--dir", str(data))).stdout
        assert await ps_id_of(admin, "ps3") == ps3 and exists(data / "cache")
        await until("the restarted PS logged its start", 20, lambda: started_twice(data / "ps.log"))
        await under_load(sc)  # the restarted PS, on its re-registered identity, carries the writes
        refused = await cli(lab, "ps", "remove", "ps3", ok=False)
        assert "move them first" in refused.stderr
        kept = await cli(lab, "ps", "uninstall", "--dir", str(data), ok=False)
        assert "still has this ps" in kept.stderr and exists(data)
        await cli(lab, "ps", "switch", "ps3", "--to", "ps1", "--wait", "--timeout-s", "90")
        await cli(lab, "ps", "remove", "ps3")
        await cli(lab, "ps", "uninstall", "--dir", str(data))
        assert not exists(data) and await ps_id_of(admin, "ps3") is None
        await under_load(sc)
        assert (await disk_entry(admin, sc.disk_id))["ps_id"] != ps3
        await oracle_latest(admin, sc)
        bad = await cli(lab, "machine", "properties", "m1", "--target-name", "web_01", ok=False)
        assert "letters, digits and hyphens" in bad.stderr
        await cli(lab, "machine", "properties", "m1", "--target-name", "web-01", "--target-size", "Standard_D14")
        shown = await cli(lab, "--json", "machine", "properties", "m1")
        assert json.loads(shown.stdout)["target_name"] == "web-01"
    finally:
        if exists(data):
            await cli(lab, "ps", "stop", "--dir", str(data), "--force", ok=None)
        await admin.__aexit__(None, None, None)
