"""Typed configuration of the emulated on-prem hypervisor (``python -m deploy.hypervisor``).

Rules: the admin account (vCenter-like) and every VM's guest administrator are plain username /
password pairs held in this file (the lab writes it 0600; the passwords stay out of reprs). VM and
disk names are single safe path components (they name directories and files under ``data_dir``),
unique, and a VM's ``os`` is linux|windows, its ``power_state`` on|off. ``agent_overrides`` are
extra keys written into every installed agent's config (the lab's short intervals); ``agent_argv``
replaces ``python -m agent`` (tests start a stand-in; ``--config FILE`` is always appended).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError

HV_PORT = 443
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
OSES = ("linux", "windows")
POWER_STATES = ("on", "off")


@dataclass
class VMDisk:
    name: str = "disk0"
    size_bytes: int = 64 * 1024 * 1024


@dataclass
class VMConfig:
    name: str = ""
    host_id: str = ""
    address: str = "127.0.0.1"
    os: str = "linux"
    power_state: str = "on"
    guest_username: str = "Administrator"
    guest_password: str = field(default="", repr=False)
    disks: list[VMDisk] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ConfigError(f"vm name {self.name!r} must match {NAME_RE.pattern}")
        if not self.host_id:
            raise ConfigError(f"vm {self.name}: host_id is required")
        if self.os not in OSES or self.power_state not in POWER_STATES:
            raise ConfigError(f"vm {self.name}: os must be one of {OSES}, power_state one of {POWER_STATES}")
        if not self.guest_username or not self.guest_password:
            raise ConfigError(f"vm {self.name}: guest_username and guest_password are required")
        names = [d.name for d in self.disks]
        if len(set(names)) != len(names) or not all(NAME_RE.match(n) for n in names):
            raise ConfigError(f"vm {self.name}: disk names must be unique and match {NAME_RE.pattern}")
        if any(d.size_bytes <= 0 or d.size_bytes % 4096 for d in self.disks):
            raise ConfigError(f"vm {self.name}: disk sizes must be positive multiples of 4096")

    def view(self, agent_installed: bool) -> dict[str, Any]:
        """The inventory item (never a password)."""
        return {"name": self.name, "host_id": self.host_id, "address": self.address, "os": self.os,
                "power_state": self.power_state, "agent_installed": agent_installed,
                "disks": [{"name": d.name, "size_bytes": d.size_bytes} for d in self.disks]}


@dataclass
class HypervisorConfig:
    data_dir: Path = Path("hv-data")
    listen_host: str = "127.0.0.1"
    port: int = HV_PORT
    log_file: Path | None = None
    admin_username: str = "administrator@vsphere.local"
    admin_password: str = field(default="", repr=False)
    tls_hosts: list[str] = field(default_factory=list)  # extra names in the certificate (listen_host is in)
    agent_argv: list[str] = field(default_factory=list)  # empty: [sys.executable, "-m", "agent"]
    agent_overrides: dict[str, Any] = field(default_factory=dict)
    agent_stop_timeout_s: float = 10.0  # a restarted agent gets this long after SIGTERM, then SIGKILL
    vms: list[VMConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.admin_username or not self.admin_password:
            raise ConfigError("admin_username and admin_password are required")
        names = [vm.name for vm in self.vms]
        if len(set(names)) != len(names):
            raise ConfigError("vm names must be unique")
        if not 0 <= self.port <= 65535 or self.agent_stop_timeout_s <= 0:
            raise ConfigError("need 0 <= port <= 65535 and agent_stop_timeout_s > 0")

    def vm(self, name: str) -> VMConfig | None:
        return next((vm for vm in self.vms if vm.name == name), None)
