"""The emulated hypervisor over real HTTPS on 127.0.0.1: certificate and fingerprint, the admin
inventory, the guest install of the agent (refusals change nothing; the token stays out of argv,
logs and answers), restarts of agents, and the daemon's SIGTERM leaving VMs' agents running."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sys
import time
from asyncio.subprocess import DEVNULL
from pathlib import Path

from common import config as cfgmod
from common import tls
from common.config import AgentConfig
from deploy import hvvm
from deploy.hypervisor import vm_pids
from tests.deploy.hvlab import (
    ADMIN,
    GUEST,
    SLEEPER,
    Endpoint,
    hv_config,
    hv_request,
    kill_agents,
    new_token,
    running_hv,
)

REPO = Path(__file__).resolve().parents[2]
CS_URL = "https://127.0.0.1:9"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


async def test_certificate_is_made_once_and_its_fingerprint_written(tmp_path: Path) -> None:
    cfg = hv_config(tmp_path / "hv")
    async with running_hv(cfg) as hv:
        first = hv.fingerprint
    cert = (cfg.data_dir / "tls" / "cert.pem").read_bytes()
    assert first == hashlib.sha256(tls.der_of_pem(cert)).hexdigest()
    assert (cfg.data_dir / "fingerprint").read_text().strip() == first
    assert (cfg.data_dir / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    disk = cfg.data_dir / "vms" / "web01" / "disk1.img"
    assert disk.stat().st_size == 2 << 20 and disk.stat().st_blocks == 0  # sparse
    async with running_hv(cfg) as again:
        assert again.fingerprint == first


async def test_inventory_needs_the_admin_account(tmp_path: Path) -> None:
    async with running_hv(hv_config(tmp_path / "hv")) as hv:
        for auth in (None, (ADMIN[0], "wrong"), GUEST):
            status, body = await hv_request(hv, "GET", "/api/vms", auth)
            assert status == 401 and body["code"] == "unauthorized", (auth, body)
        status, body = await hv_request(hv, "GET", "/api/vms", ADMIN)
    assert status == 200
    assert [(v["name"], v["host_id"], v["os"], v["power_state"], v["agent_installed"]) for v in body["vms"]] == [
        ("web01", "host-web01", "linux", "on", False), ("db01", "host-db01", "windows", "off", False)]
    assert body["vms"][0]["disks"] == [{"name": "disk0", "size_bytes": 1 << 20},
                                       {"name": "disk1", "size_bytes": 2 << 20}]
    assert GUEST[1] not in str(body) and ADMIN[1] not in str(body)


async def test_refused_installs_change_nothing(tmp_path: Path) -> None:
    cfg = hv_config(tmp_path / "hv")
    token = new_token()
    good = {"cs_url": CS_URL, "enroll_token": token}
    async with running_hv(cfg) as hv:
        cases = [("web01", (GUEST[0], "wrong"), good, 401, "guest_credentials_refused"),
                 ("web01", ADMIN, good, 401, "guest_credentials_refused"),
                 ("web01", None, good, 401, "guest_credentials_refused"),
                 ("nosuchvm", GUEST, good, 404, "not_found"),
                 ("db01", GUEST, good, 409, "vm_powered_off"),
                 ("web01", GUEST, {"cs_url": CS_URL, "enroll_token": token + "x"}, 400, "bad_request"),
                 ("web01", GUEST, {"cs_url": "http://127.0.0.1:9", "enroll_token": token}, 400, "bad_request"),
                 ("web01", GUEST, {"cs_url": CS_URL}, 400, "bad_request")]
        for vm, auth, body, want_status, want_code in cases:
            status, answer = await hv_request(hv, "POST", f"/api/vms/{vm}/guest/install-agent", auth, body)
            assert (status, answer["code"]) == (want_status, want_code), (vm, auth, body, answer)
            assert token not in str(answer)
        status, inventory = await hv_request(hv, "GET", "/api/vms", ADMIN)
        assert not any(v["agent_installed"] for v in inventory["vms"])
        assert vm_pids(cfg.data_dir) == {}
        assert not (cfg.data_dir / "vms" / "web01" / "agent").exists()


async def test_install_writes_the_agent_config_and_starts_it_without_showing_the_token(tmp_path: Path) -> None:
    from common import logging as dlog
    log_file = tmp_path / "hv.log"
    dlog.setup("hypervisor", log_file)
    cfg = hv_config(tmp_path / "hv", agent_overrides={"heartbeat_interval_s": 1.0})
    token, token2 = new_token(), new_token()
    async with running_hv(cfg) as hv:
        status, body = await hv_request(hv, "POST", "/api/vms/web01/guest/install-agent", GUEST,
                                        {"cs_url": CS_URL, "enroll_token": token})
        assert status == 200 and body["installed"] is True and body["restarted"] is False, body
        pid = body["pid"]
        assert alive(pid) and vm_pids(cfg.data_dir) == {"web01": pid}
        agent_dir = cfg.data_dir / "vms" / "web01" / "agent"
        token_file = agent_dir / "enroll-token"
        assert token_file.read_text() == token and token_file.stat().st_mode & 0o777 == 0o600
        agent_cfg = cfgmod.load(AgentConfig, agent_dir / "agent.toml")
        assert (agent_cfg.host_id, agent_cfg.address, agent_cfg.cs_url) == ("host-web01", "10.0.0.11", CS_URL)
        assert agent_cfg.enroll_token_file == token_file.resolve() and agent_cfg.passphrase_file is None
        assert agent_cfg.heartbeat_interval_s == 1.0
        assert [(d.name, d.path, d.size_bytes) for d in agent_cfg.disks] == [
            ("disk0", (cfg.data_dir / "vms/web01/disk0.img").resolve(), 1 << 20),
            ("disk1", (cfg.data_dir / "vms/web01/disk1.img").resolve(), 2 << 20)]
        argv = cmdline(pid)
        assert argv[:len(SLEEPER)] == SLEEPER and str((agent_dir / "agent.toml").resolve()) in argv
        assert token not in "\0".join(argv) and token not in (agent_dir / "agent.toml").read_text()
        status, inventory = await hv_request(hv, "GET", "/api/vms", ADMIN)
        assert [v["agent_installed"] for v in inventory["vms"]] == [True, False]

        status, body = await hv_request(hv, "POST", "/api/vms/web01/guest/install-agent", GUEST,
                                        {"cs_url": CS_URL, "enroll_token": token2})
        assert status == 200 and body["restarted"] is True and body["pid"] != pid, body
        assert not alive(pid) and vm_pids(cfg.data_dir) == {"web01": body["pid"]}
        assert token_file.read_text() == token2
    logged = log_file.read_text()
    assert "agent_installed" in logged and token not in logged and token2 not in logged
    assert GUEST[1] not in logged and ADMIN[1] not in logged


async def test_a_start_relaunches_installed_agents_that_are_not_running(tmp_path: Path) -> None:
    cfg = hv_config(tmp_path / "hv")
    async with running_hv(cfg) as hv:
        status, body = await hv_request(hv, "POST", "/api/vms/web01/guest/install-agent", GUEST,
                                        {"cs_url": CS_URL, "enroll_token": new_token()})
        assert status == 200
    assert vm_pids(cfg.data_dir) == {}  # the helper killed it (a powered-off host)
    async with running_hv(cfg):
        pids = vm_pids(cfg.data_dir)
        assert list(pids) == ["web01"] and pids["web01"] != body["pid"] and alive(pids["web01"])
        assert hvvm.running_pid(cfg.data_dir, "db01") is None and not hvvm.is_installed(cfg.data_dir, "db01")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_port(port: int, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert proc.returncode is None, "the hypervisor exited"
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        assert time.monotonic() < deadline, "the hypervisor did not listen"
        await asyncio.sleep(0.1)


async def test_daemon_sigterm_leaves_agents_running_and_a_restart_keeps_them(tmp_path: Path) -> None:
    port = _free_port()
    cfg = hv_config(tmp_path / "hv", port=port, log_file=tmp_path / "hv.log")
    top = {"data_dir": str(cfg.data_dir), "listen_host": "127.0.0.1", "port": port, "log_file": str(cfg.log_file),
           "admin_username": ADMIN[0], "admin_password": ADMIN[1], "agent_argv": SLEEPER}
    text = cfgmod.dump_toml(top)
    for vm in cfg.vms:  # the disks as inline tables (dump_toml does not nest arrays of tables)
        disks = ", ".join(f'{{name = "{d.name}", size_bytes = {d.size_bytes}}}' for d in vm.disks)
        text += cfgmod.dump_toml({"x": [{"name": vm.name, "host_id": vm.host_id, "address": vm.address, "os": vm.os,
                                        "power_state": vm.power_state, "guest_username": GUEST[0],
                                        "guest_password": GUEST[1]}]}).replace("[[x]]", "[[vms]]")
        text += f"disks = [{disks}]\n"
    conf = tmp_path / "hv.toml"
    tls.write_private(conf, text.encode())
    argv = ["-m", "deploy.hypervisor", "--config", str(conf)]
    token = new_token()
    procs: list[asyncio.subprocess.Process] = []

    async def launch() -> Endpoint:
        procs.append(await asyncio.create_subprocess_exec(sys.executable, *argv, cwd=REPO, stdout=DEVNULL,
                                                          stderr=DEVNULL))
        await _wait_port(port, procs[-1])
        return Endpoint(port, (cfg.data_dir / "fingerprint").read_text().strip())

    try:
        hv = await launch()
        status, body = await hv_request(hv, "POST", "/api/vms/web01/guest/install-agent", GUEST,
                                        {"cs_url": CS_URL, "enroll_token": token})
        assert status == 200, body
        procs[-1].send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(procs[-1].wait(), 20) == 0
        assert alive(body["pid"]) and vm_pids(cfg.data_dir) == {"web01": body["pid"]}

        await launch()
        assert vm_pids(cfg.data_dir) == {"web01": body["pid"]}  # still running: not launched twice
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        kill_agents(cfg.data_dir)
    logged = cfg.log_file.read_text() if cfg.log_file else ""
    assert "hypervisor_started" in logged and token not in logged and ADMIN[1] not in logged
    assert os.stat(conf).st_mode & 0o777 == 0o600


async def test_the_real_agent_starts_from_the_written_config_and_tries_to_enroll(tmp_path: Path) -> None:
    cfg = hv_config(tmp_path / "hv", agent_argv=[], agent_overrides={"retry_max_backoff_s": 0.2})
    token = new_token()
    async with running_hv(cfg) as hv:
        status, body = await hv_request(hv, "POST", "/api/vms/web01/guest/install-agent", GUEST,
                                        {"cs_url": CS_URL, "enroll_token": token})
        assert status == 200, body
        agent_log = cfg.data_dir / "vms" / "web01" / "agent" / "agent.log"
        deadline = time.monotonic() + 20
        while "register/challenge" not in (agent_log.read_text() if agent_log.exists() else ""):
            assert time.monotonic() < deadline and alive(body["pid"]), "the agent did not try to register"
            await asyncio.sleep(0.1)
        assert cmdline(body["pid"])[1:3] == ["-m", "agent"] and token not in "\0".join(cmdline(body["pid"]))
        stdout = (cfg.data_dir / "vms" / "web01" / "agent" / "stdout.log").read_text()
    assert token not in agent_log.read_text() and token not in stdout
    assert token.split(".")[2] not in agent_log.read_text()
