"""The emulated VMs' side of the hypervisor: sparse disk files, the installed agent's files and
its process.

Layout under ``data_dir/vms/<vm>/``: ``<disk>.img`` (sparse, made at start), ``agent/agent.toml``
(its presence means "agent installed"), ``agent/enroll-token`` (0600; the agent deletes it once
spent), ``agent/data/``, ``agent/agent.log``, ``agent/agent.sock``, and ``agent.pid``.

Rules: the enrollment token is written only to the 0600 token file, never into argv, the config
or a log. Agents run in their own session (a VM outlives its manager: the hypervisor's SIGTERM
does not reach them). A pid counts as this VM's agent only while ``/proc/<pid>/cmdline`` names
the VM's agent config (a recycled pid is not mistaken for it) and it is not a zombie.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import config as cfgmod
from common import logging as dlog
from common import tls
from deploy.hvconfig import HypervisorConfig, VMConfig

log = dlog.get("drlab.hypervisor.vm")

REPO_ROOT = Path(__file__).resolve().parents[1]


def vm_dir(data_dir: Path, vm: str) -> Path:
    return data_dir / "vms" / vm


def agent_dir(data_dir: Path, vm: str) -> Path:
    return vm_dir(data_dir, vm) / "agent"


def agent_config_path(data_dir: Path, vm: str) -> Path:
    return agent_dir(data_dir, vm) / "agent.toml"


def pid_path(data_dir: Path, vm: str) -> Path:
    return vm_dir(data_dir, vm) / "agent.pid"


def is_installed(data_dir: Path, vm: str) -> bool:
    return agent_config_path(data_dir, vm).exists()


def make_disks(data_dir: Path, vm: VMConfig) -> None:
    """Create each disk file sparse at its size (an existing file keeps its content)."""
    vm_dir(data_dir, vm.name).mkdir(parents=True, exist_ok=True)
    for disk in vm.disks:
        path = vm_dir(data_dir, vm.name) / f"{disk.name}.img"
        with open(path, "ab") as f:
            if f.tell() < disk.size_bytes:
                f.truncate(disk.size_bytes)


def agent_config(cfg: HypervisorConfig, vm: VMConfig, cs_url: str) -> dict[str, Any]:
    """The agent's config document (paths absolute; holds the token file's path, not the token)."""
    base = agent_dir(cfg.data_dir, vm.name).resolve()
    doc: dict[str, Any] = {
        "data_dir": str(base / "data"), "cs_url": cs_url, "host_id": vm.host_id, "address": vm.address,
        "enroll_token_file": str(base / "enroll-token"), "log_file": str(base / "agent.log"),
        "socket_path": str(base / "agent.sock"),
    }
    doc.update(cfg.agent_overrides)
    doc["disks"] = [{"name": d.name, "path": str((vm_dir(cfg.data_dir, vm.name) / f"{d.name}.img").resolve()),
                     "size_bytes": d.size_bytes} for d in vm.disks]
    return doc


def write_agent_files(cfg: HypervisorConfig, vm: VMConfig, cs_url: str, token_text: str) -> Path:
    """Write the token file (0600) then the config; returns the config's path."""
    base = agent_dir(cfg.data_dir, vm.name)
    (base / "data").mkdir(parents=True, exist_ok=True)
    tls.write_private(base / "enroll-token", token_text.encode())
    path = agent_config_path(cfg.data_dir, vm.name)
    tls.durable_write(path, cfgmod.dump_toml(agent_config(cfg, vm, cs_url)).encode())
    return path


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return []
    return [] if state in ("Z", "X") else raw.decode(errors="replace").split("\0")


def _read_pid(data_dir: Path, vm: str) -> int | None:
    try:
        return int(pid_path(data_dir, vm).read_text().strip())
    except (OSError, ValueError):
        return None


def running_pid(data_dir: Path, vm: str) -> int | None:
    """The VM's live agent process, if any (see the module doc)."""
    pid = _read_pid(data_dir, vm)
    if pid is None:
        return None
    return pid if str(agent_config_path(data_dir, vm).resolve()) in _cmdline(pid) else None


def vm_pids(data_dir: Path) -> dict[str, int]:
    """VM name -> pid of its running agent (for the lab to stop them)."""
    root = Path(data_dir) / "vms"
    if not root.is_dir():
        return {}
    found = {d.name: running_pid(Path(data_dir), d.name) for d in sorted(root.iterdir()) if d.is_dir()}
    return {name: pid for name, pid in found.items() if pid is not None}


class Launcher:
    """Starts and stops agents; keeps the Popen of those it started (so they are reaped)."""

    def __init__(self, cfg: HypervisorConfig) -> None:
        self.cfg = cfg
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def argv(self, vm: str) -> list[str]:
        head = list(self.cfg.agent_argv) or [sys.executable, "-m", "agent"]
        return [*head, "--config", str(agent_config_path(self.cfg.data_dir, vm).resolve())]

    def stop(self, vm: str) -> bool:
        """Stop the VM's agent (SIGTERM, then SIGKILL after the timeout); True if one was running."""
        self._reap(vm)
        pid = running_pid(self.cfg.data_dir, vm)
        if pid is None:
            return False
        self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.agent_stop_timeout_s
        while running_pid(self.cfg.data_dir, vm) == pid and time.monotonic() < deadline:
            self._reap(vm)
            time.sleep(0.05)
        if running_pid(self.cfg.data_dir, vm) == pid:
            self._signal(pid, signal.SIGKILL)
        child = self._children.pop(vm, None)
        if child is not None:
            child.wait(timeout=5)
        log.info("agent_stopped", vm=vm, pid=pid)
        return True

    def start(self, vm: str) -> int:
        """Start the VM's agent detached (own session); writes and returns its pid."""
        out = agent_dir(self.cfg.data_dir, vm) / "stdout.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        with open(out, "ab") as sink:
            child = subprocess.Popen(self.argv(vm), stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                                     cwd=agent_dir(self.cfg.data_dir, vm), env=env, start_new_session=True)
        self._children[vm] = child
        tls.durable_write(pid_path(self.cfg.data_dir, vm), f"{child.pid}\n".encode())
        log.info("agent_started", vm=vm, pid=child.pid)
        return child.pid

    def _reap(self, vm: str) -> None:
        child = self._children.get(vm)
        if child is not None and child.poll() is not None:
            self._children.pop(vm, None)

    def reap_all(self) -> None:
        for vm in list(self._children):
            self._reap(vm)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
