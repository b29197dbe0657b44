"""The on-prem hypervisor in the process lab: its PS discovers the VMs, the CS lists them, the
mobility agent is pushed onto one with an account from the CS's account store and enrolls with a
single-use token (no passphrase ever reaches the VM); a wrong account or a powered-off VM fails the
job clearly and leaves nothing registered; the pushed agent replicates; ``lab down`` stops it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from deploy import hvvm, labhv
from deploy.lab import Lab, alive
from tests.integration.conftest import down_clean, hv_lab, run_cli, until


@pytest.fixture
async def hvlab(tmp_path: Path) -> AsyncIterator[Lab]:
    # with the way back (a cloud PS, an on-prem MT): the pushed machine must still go on-prem PS -> cloud MT
    lab = hv_lab(tmp_path, machines=[], way_back=True)
    try:
        yield lab
    finally:
        down_clean(lab)


async def agents(lab: Lab, host_id: str) -> list[dict[str, Any]]:
    async with lab.admin() as admin:
        return [c for c in await admin.components() if c["role"] == "agent" and c["host_id"] == host_id]


def inventory(lab: Lab) -> dict[str, dict[str, Any]]:
    return {i["vm"]: i for i in json.loads(run_cli(lab, "--json", "inventory").stdout)}


def install(lab: Lab, vm: str, account: str, ok: bool) -> dict[str, Any]:
    proc = run_cli(lab, "--json", "machine", "install", vm, "--hypervisor", "hv1", "--account", account,
                   "--wait", "--timeout-s", "60", ok=ok)
    return dict(json.loads(proc.stdout))


@pytest.mark.timeout(180)
async def test_discover_push_install_enroll_and_protect(hvlab: Lab) -> None:
    lab = hvlab
    await lab.up()
    (hv,) = lab.topology.hypervisors
    vms = await until("discovery", 30, lambda: _discovered(lab))
    assert vms["web1"]["power_state"] == "on" and vms["old1"]["power_state"] == "off"
    assert vms["web1"]["disks"] == [{"name": "disk0", "size_bytes": 8 << 20}]
    assert not vms["web1"]["agent_installed"] and vms["web1"]["component_id"] is None

    # a wrong password for the VM's administrator: the job fails, saying so; nothing is left behind
    secret = "not-the-password"
    run_cli(lab, "account", "add", "wrong", "--username", labhv.GUEST_USER, input_text=secret + "\n")
    job = install(lab, "web1", "wrong", ok=False)
    assert job["state"] == "failed", job
    assert "guest_credentials_refused" in json.dumps(job) and "wrong" in job["error"], job["error"]
    assert secret not in json.dumps(job)
    assert not await agents(lab, "web1")
    assert not hvvm.is_installed(lab.node_dir(hv), "web1") and not hvvm.vm_pids(lab.node_dir(hv))

    # a powered-off VM cannot take an agent
    job = install(lab, "old1", labhv.guest_account(hv), ok=False)
    assert "vm_powered_off" in json.dumps(job), job

    # the right account: the PS pushes, the hypervisor starts the agent, which enrolls by token
    job = install(lab, "web1", labhv.guest_account(hv), ok=True)
    assert job["state"] == "succeeded", job
    assert job["result"]["site"] == "onprem", job  # where its PS is: protection picks a PS there, an MT outside
    (agent,) = await agents(lab, "web1")
    agent_dir = hvvm.agent_dir(lab.node_dir(hv), "web1")
    assert not (agent_dir / "enroll-token").exists(), "the spent token is still on the VM"
    assert "passphrase" not in hvvm.agent_config_path(lab.node_dir(hv), "web1").read_text()
    passphrase = lab.passphrase_file.read_text().strip()
    assert all(passphrase not in p.read_text(errors="replace") for p in agent_dir.rglob("*") if p.is_file())
    found = await until("the agent in the inventory", 30,
                        lambda: _installed(lab, "web1"))
    assert found["component_id"] == agent["component_id"]

    # the pushed agent replicates like any other
    run_cli(lab, "protect", agent["component_id"], "--wait", "--timeout-s", "60")
    async with lab.admin() as admin:
        disks = [d for d in await admin.disks() if d["machine_id"] == agent["component_id"]]
        comps = {c["component_id"]: c["host_id"] for c in await admin.components()}
    assert [d["state"] for d in disks] == ["protected"], disks
    assert (comps[disks[0]["ps_id"]], comps[disks[0]["mt_id"]]) == ("ps1", "mt1")

    pids = hvvm.vm_pids(lab.node_dir(hv))
    assert set(pids) == {"web1"}
    assert lab.down() == []
    assert not any(alive(pid) for pid in pids.values()), "the VM's agent outlived lab down"


async def _discovered(lab: Lab) -> dict[str, dict[str, Any]] | None:
    vms = inventory(lab)
    return vms if {"web1", "old1"} <= set(vms) else None


async def _installed(lab: Lab, vm: str) -> dict[str, Any] | None:
    run_cli(lab, "hypervisor", "discover", "hv1", "--wait", "--timeout-s", "20")
    item = inventory(lab).get(vm)
    return item if item and item["agent_installed"] and item["component_id"] else None
