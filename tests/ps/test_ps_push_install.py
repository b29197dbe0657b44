"""ps/push_install.py against a real hypervisor and the fake CS: claim -> install -> result, with
the guest account and token of the claim; refused guest credentials, a powered-off VM and a job
claimed before are reported (or skipped) and install nothing; the PS service runs it from its
settings document."""

from __future__ import annotations

import asyncio
from typing import Any

from pshv import HvWorld, wait_until

from common.config import PSConfig
from deploy import hvvm
from deploy.hypervisor import vm_pids
from ps.push_install import PushInstaller, parse_pushes
from ps.service import PSService
from tests.deploy.hvlab import GUEST, new_token


def job(world: HvWorld, job_id: str, vm: str = "web01", password: str = GUEST[1],
        fingerprint: str | None = None) -> tuple[dict[str, Any], str]:
    """Register a claim answer at the fake CS; returns (the settings item, the token)."""
    token = new_token()
    world.cs.claims[job_id] = {"username": GUEST[0], "password": password, "enroll_token": token,
                               "address": "127.0.0.1", "port": world.hv.port,
                               "fingerprint": fingerprint or world.hv.fingerprint}
    return {"job_id": job_id, "hypervisor": "vc1", "vm": vm, "host_id": f"host-{vm}", "account": "guest-admin"}, token


def installer(world: HvWorld) -> PushInstaller:
    return PushInstaller(world.client, cs_url=world.cs_url, timeout_s=5.0, max_backoff_s=0.1)


async def test_a_push_job_is_claimed_installed_and_reported(world: HvWorld) -> None:
    item, token = job(world, "j1")
    push = installer(world)
    assert await push.run_one(parse_pushes({"push_installs": [item]})[0]) == {"ok": True}
    assert world.cs.claimed == ["j1"] and world.cs.results == [("j1", {"ok": True})]
    data_dir = world.hv.cfg.data_dir
    assert list(vm_pids(data_dir)) == ["web01"]
    assert (hvvm.agent_dir(data_dir, "web01") / "enroll-token").read_text() == token
    agent_toml = hvvm.agent_config_path(data_dir, "web01").read_text()
    assert world.cs_url in agent_toml and token not in agent_toml


async def test_refused_guest_credentials_are_reported_and_install_nothing(world: HvWorld) -> None:
    item, token = job(world, "j2", password="wrong")
    result = await installer(world).run_one(parse_pushes({"push_installs": [item]})[0])
    assert result is not None and result["ok"] is False and result["code"] == "guest_credentials_refused"
    assert world.cs.results == [("j2", result)] and "wrong" not in str(result) and token not in str(result)
    assert vm_pids(world.hv.cfg.data_dir) == {} and not hvvm.is_installed(world.hv.cfg.data_dir, "web01")


async def test_a_powered_off_vm_and_a_wrong_fingerprint_are_reported(world: HvWorld) -> None:
    off, _ = job(world, "j3", vm="db01")
    pinned, _ = job(world, "j4", fingerprint="00" * 32)
    push = installer(world)
    results = [await push.run_one(item) for item in parse_pushes({"push_installs": [off, pinned]})]
    assert [(r or {}).get("code") for r in results] == ["vm_powered_off", "fingerprint_mismatch"]
    assert vm_pids(world.hv.cfg.data_dir) == {}


async def test_jobs_from_the_settings_run_once_and_a_job_claimed_before_is_skipped(world: HvWorld) -> None:
    item, _ = job(world, "j5")
    world.cs.claimed.append("j6")  # claimed by an earlier run of this PS
    done, _ = job(world, "j6")
    push = installer(world)
    try:
        doc = {"push_installs": [item, done, {"job_id": "broken"}]}
        push.apply(doc)
        await wait_until(lambda: set(push.handled) == {"j5", "j6"})
        assert push.handled == {"j5": {"ok": True}, "j6": None}
        push.apply(doc)  # the CS has not dropped them yet: nothing is done twice
        await asyncio.sleep(0.2)
        assert world.cs.claimed == ["j6", "j5"] and world.cs.results == [("j5", {"ok": True})]
    finally:
        await push.stop()


async def test_the_ps_runs_the_push_installs_of_its_settings(world: HvWorld) -> None:
    item, _ = job(world, "j7")
    cfg = PSConfig(data_dir=world.ps_identity, cs_url=world.cs_url, data_port=0, heartbeat_interval_s=0.2,
                   settings_wait_s=1.0, retry_max_backoff_s=0.2, request_timeout_s=5.0, cache_max_bytes=1 << 20)
    world.cs.publish({"disks": [], "push_installs": [item]})
    ps = PSService(cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await wait_until(lambda: world.cs.results == [("j7", {"ok": True})])
    finally:
        await ps.stop()
    assert list(vm_pids(world.hv.cfg.data_dir)) == ["web01"]
