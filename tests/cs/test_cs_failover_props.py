"""A machine's failover properties through the CS (cs/failover_props.py, on both engines): set,
shown in the machine's view, refused bad values change nothing; a failover's and a commit's results
carry them (the twin boots under the target name: deploy/compute.py twin_name)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cshelpers import raw
from opsfleet import OpsFleet, running_fleet

from common import tls
from deploy.compute import twin_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def fleet(cs_env: Any, tmp_path: Path) -> AsyncIterator[OpsFleet]:
    async with running_fleet(cs_env, tmp_path) as f:
        yield f


async def call(f: OpsFleet, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return await raw(f.site.env.url, tls.client_context(f.site.env.admin_files), method, path, body)


@pytest.mark.timeout(30)
async def test_set_show_and_refuse(fleet: OpsFleet) -> None:
    f = fleet
    mid = f.mid("m1")
    path = f"/v1/machines/{mid}/failover-properties"
    status, body = await call(f, "GET", path)
    assert status == 200 and body == {"machine_id": mid, "target_name": None, "target_size": None,
                                      "target_network": None}
    status, body = await call(f, "PATCH", path, {"target_name": "web-01", "target_size": "Standard_A4",
                                                 "target_network": "corp-vnet"})
    assert status == 200, body
    assert (body["target_name"], body["target_size"], body["target_network"]) == ("web-01", "Standard_A4",
                                                                                  "corp-vnet")
    good = {"target_name": "web-01", "target_size": "Standard_A4", "target_network": "corp-vnet"}
    status, machine = await call(f, "GET", f"/v1/machines/{mid}")
    assert status == 200 and machine["failover_properties"] == good
    bad_bodies: list[tuple[Any, str]] = [
        ({"target_name": "a" * 64}, "1-63 letters, digits and hyphens"),
        ({"target_name": ""}, "1-63 letters, digits and hyphens"),
        ({"target_name": "-web"}, "starting and ending with a letter or digit"),
        ({"target_name": "web_01"}, "1-63 letters, digits and hyphens"),
        ({"target_name": "wéb"}, "1-63 letters, digits and hyphens"),
        ({"target_name": "ok", "target_size": "Huge"}, "target_size must be one of"),  # nothing of it is kept
        ({"target_network": "-x"}, "target_network must be 2-64"),
        ({"target_os": "linux"}, "unknown field"),
        ({}, "at least one"),
        (["web"], "JSON object"),
    ]
    for bad, rule in bad_bodies:
        status, reply = await call(f, "PATCH", path, bad)
        assert status == 400 and reply["code"] == "bad_request" and rule in reply["message"], (bad, reply)
    status, body = await call(f, "GET", path)
    assert {k: body[k] for k in good} == good  # unchanged
    status, reply = await call(f, "PATCH", f"/v1/machines/{'ab' * 16}/failover-properties", {"target_name": "x"})
    assert status == 404
    status, reply = await call(f, "PATCH", "/v1/machines/nothex/failover-properties", {"target_name": "x"})
    assert status == 400
    status, reply = await raw(f.site.env.url, f.machines["m1"].ssl, "PATCH", path, {"target_name": "x"})
    assert status == 403  # an agent may not
    status, body = await call(f, "PATCH", path, {"target_size": None})  # null clears one
    assert status == 200 and body["target_size"] is None and body["target_name"] == "web-01"


@pytest.mark.timeout(30)
async def test_failover_and_commit_results_carry_the_target(fleet: OpsFleet) -> None:
    f = fleet
    mid = f.mid("m1")
    status, _ = await call(f, "PATCH", f"/v1/machines/{mid}/failover-properties",
                           {"target_name": "web-dr", "target_network": "dr-net"})
    assert status == 200
    job = await f.wait(await f.op("m1", "failover", {"mode": "unplanned", "point": "latest"}))
    assert job["state"] == "succeeded", job
    assert job["result"]["target"] == {"name": "web-dr", "size": None, "network": "dr-net"}
    committed = await f.wait(await f.op("m1", "commit"))
    assert committed["state"] == "succeeded", committed
    assert committed["result"]["target"]["name"] == "web-dr"
    assert twin_name("m1", committed["result"]) == "web-dr"
    assert twin_name("m1", {"target": {"name": None}}) == "m1-cloud" == twin_name("m1")


async def drlab(f: OpsFleet, *argv: str) -> tuple[int, str, str]:
    """The `drlab` command as a process against the fleet's CS: (exit code, stdout, stderr)."""
    env = f.site.env
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "deploy.cli", "--cs-url", env.url, "--admin-dir", str(env.admin_files.directory),
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


@pytest.mark.timeout(60)
async def test_the_cli_sets_shows_and_prints_the_rule(fleet: OpsFleet) -> None:
    f = fleet
    code, _, err = await drlab(f, "machine", "properties", "m1", "--target-name", "web_01")
    assert code == 2 and "1-63 letters, digits and hyphens" in err
    code, out, _ = await drlab(f, "machine", "properties", "m1", "--target-name", "web-01",
                               "--target-size", "Standard_D14")
    assert code == 0 and "web-01" in out and "Standard_D14" in out
    code, out, _ = await drlab(f, "machine", "properties", "m1")
    assert code == 0 and out.split("\n")[3].split() == ["target_network", "-"]
