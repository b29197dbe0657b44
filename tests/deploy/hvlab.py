"""Helpers for tests of the emulated hypervisor (deploy/hypervisor.py) and of the PS's use of it:
a config with two VMs, an in-process hypervisor whose "agent" is a sleeping stand-in process, and
cleanup that kills every agent process it started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from deploy.hvconfig import HypervisorConfig, VMConfig, VMDisk
from deploy.hypervisor import HypervisorService, vm_pids

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]
ADMIN = ("admin@vsphere.local", "admin-pw-1")
GUEST = ("Administrator", "guest-pw-1")


def new_token() -> str:
    return f"drlab-enroll-v1.{secrets.token_hex(16)}.{secrets.token_urlsafe(32)}"


def hv_config(data_dir: Path, **overrides: Any) -> HypervisorConfig:
    vms = [VMConfig(name="web01", host_id="host-web01", address="10.0.0.11", os="linux", power_state="on",
                    guest_username=GUEST[0], guest_password=GUEST[1],
                    disks=[VMDisk("disk0", 1 << 20), VMDisk("disk1", 2 << 20)]),
           VMConfig(name="db01", host_id="host-db01", address="10.0.0.12", os="windows", power_state="off",
                    guest_username=GUEST[0], guest_password=GUEST[1], disks=[VMDisk("disk0", 1 << 20)])]
    kw: dict[str, Any] = {"data_dir": data_dir, "listen_host": "127.0.0.1", "port": 0, "admin_username": ADMIN[0],
                          "admin_password": ADMIN[1], "agent_argv": SLEEPER, "agent_stop_timeout_s": 3.0, "vms": vms}
    kw.update(overrides)
    return HypervisorConfig(**kw)


def kill_agents(data_dir: Path) -> None:
    for pid in vm_pids(data_dir).values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def running_hv(cfg: HypervisorConfig) -> AsyncIterator[HypervisorService]:
    """An in-process hypervisor; its agents are killed at exit."""
    service = HypervisorService(cfg)
    try:
        await service.start()
        yield service
    finally:
        await service.stop()
        kill_agents(cfg.data_dir)
        deadline = time.monotonic() + 10
        while vm_pids(cfg.data_dir) and time.monotonic() < deadline:  # reap the killed children
            service.launcher.reap_all()
            await asyncio.sleep(0.02)


@dataclass(frozen=True)
class Endpoint:
    """A hypervisor run as a separate process."""

    port: int
    fingerprint: str


async def hv_request(service: HypervisorService | Endpoint, method: str, path: str, auth: tuple[str, str] | None,
                     body: Any = None) -> tuple[int, Any]:
    """A raw request to the hypervisor (TLS pinned to its fingerprint)."""
    connector = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(bytes.fromhex(service.fingerprint)))
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.request(method, f"https://127.0.0.1:{service.port}{path}", json=body,
                            headers={"Authorization": aiohttp.encode_basic_auth(*auth)} if auth else None) as resp:
        return resp.status, await resp.json(content_type=None)
