"""Issue 7 point 6 over real processes (every daemon its own process): ``drlab ps check`` passes
against the lab's PS and names the TCP step once the PS is killed; a browser's ``GET /`` on the
PS's data port is 400 saying it is the data port; ``drlab ps list`` shows the PS with every
service running (from its heartbeat)."""

from __future__ import annotations

import ssl

import aiohttp
import pytest

from deploy.lab import Lab
from tests.integration.conftest import run_cli, until


@pytest.mark.timeout(180)
async def test_ps_check_list_and_browser_root_on_a_real_ps(lab: Lab) -> None:
    await lab.up()
    ps = lab.topology.pss[0]
    port = str(ps.ports["data"])
    out = run_cli(lab, "ps", "check", ps.address, port, "--timeout", "30").stdout
    assert out.count(" ok ") == 5 and "every step passed" in out, out

    browser = ssl.create_default_context()
    browser.check_hostname, browser.verify_mode = False, ssl.CERT_NONE  # the user accepted the warning
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=browser)) as session:
        async with session.get(f"https://{ps.address}:{port}/") as resp:
            assert resp.status == 400 and "data port" in (await resp.json())["message"]

    async def listed() -> str | None:
        text = run_cli(lab, "ps", "list").stdout
        return text if f"| {ps.name} " in text and "running" in text else None

    table = await until("the PS's services in its heartbeat", 30, listed)
    assert f"| {ps.name} " in table

    lab.kill_node(ps)
    failed = run_cli(lab, "ps", "check", ps.address, port, "--timeout", "10", ok=False)
    assert failed.returncode == 1 and "TCP connect failed:" in failed.stdout, failed.stdout + failed.stderr
