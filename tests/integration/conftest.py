"""Drills that run every daemon as its own process, on a loopback range of their own."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deploy.lab import Lab
from deploy.topology import load


@dataclass
class Machine:
    """One machine of a lab topology: its disks (name -> MiB) and extra TOML lines (address, nbd_port)."""

    name: str = "m1"
    disks: dict[str, int] = field(default_factory=lambda: {"disk0": 32})
    extra: str = ""

    def toml(self) -> str:
        disks = ", ".join(f'{{ name = "{d}", size_mib = {mib} }}' for d, mib in self.disks.items())
        return f'[[onprem.machines]]\nname = "{self.name}"\n{self.extra}\ndisks = [{disks}]\n'


def write_topology(path: Path, net: int, disk_mib: int = 32, pss: int = 1, *,
                   machines: list[Machine] | None = None, ps_extra: str = "", way_back: bool = False,
                   extra: str = "", mt_extra: str = "") -> Path:
    """A lab of one CS, one MT (``mt_extra``: more keys of it), ``pss`` process servers (``ps_extra``:
    more keys of each, e.g. ``", cache_mib = 8"``) and ``machines`` (default: one with one disk of ``disk_mib``);
    ``way_back``: also a cloud PS and an on-prem MT (reprotect and failback); ``extra``: more
    TOML at the end (e.g. ``[[onprem.hypervisors]]``)."""
    ps_list = ", ".join(f'{{ name = "ps{i}", address = "127.{net}.1.{i}", data_port = 9443{ps_extra} }}'
                        for i in range(1, pss + 1))
    hosts = machines if machines is not None else [Machine(disks={"disk0": disk_mib})]
    cloud_back = f'ps = [{{ name = "ps9", address = "127.{net}.2.9", data_port = 9443 }}]\n' if way_back else ""
    onprem_back = (f'mt = [{{ name = "mt9", address = "127.{net}.1.99", data_port = 9443, control_port = 9080 }}]\n'
                   if way_back else "")
    path.write_text(f"""
[cloud]
cs = {{ address = "127.{net}.2.1", port = 443 }}
mt = [{{ name = "mt1", address = "127.{net}.2.2", data_port = 9443, control_port = 9080{mt_extra} }}]
{cloud_back}[onprem]
ps = [{ps_list}]
{onprem_back}""" + "".join(m.toml() for m in hosts) + extra)
    return path


WEB1 = '{ name = "web1", disks = [{ name = "disk0", size_mib = 8 }] }'


def hypervisor_toml(net: int, old1_disks: str = '[{ name = "disk0", size_mib = 8 }]') -> str:
    """An on-prem hypervisor hv1 (127.NET.1.10:443) with VMs web1 (on, one 8 MiB disk) and old1
    (windows, powered off, ``old1_disks``): ``write_topology(..., extra=…)``."""
    old1 = f'{{ name = "old1", os = "windows", power_state = "off", disks = {old1_disks} }}'
    return (f'\n[[onprem.hypervisors]]\nname = "hv1"\naddress = "127.{net}.1.10"\nport = 443\n'
            f"vms = [\n  {WEB1},\n  {old1},\n]\n")


def hv_lab(tmp_path: Path, **topology: Any) -> Lab:
    """A lab on a loopback range of its own with hypervisor_toml's hv1 (``topology``: write_topology's
    keywords); stop it with ``down_clean``."""
    net = random.randrange(30, 250)
    old1 = topology.pop("old1_disks", None)
    extra = hypervisor_toml(net, old1) if old1 else hypervisor_toml(net)
    return Lab(load(write_topology(tmp_path / "lab.toml", net, extra=extra, **topology)), tmp_path / "lab")


def down_clean(lab: Lab) -> None:
    """Stop every daemon of the lab; one that needed SIGKILL fails the test."""
    left = lab.down()
    assert not left, f"daemons needed SIGKILL at teardown: {left}"


def run_cli(lab: Lab, *args: str, ok: bool | None = True, timeout_s: float = 120.0,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """``drlab --topology … --dir … ARGS`` as an operator runs it (``input_text`` on its stdin);
    ``ok``: the exit code must be 0 (True), must not be (False), or is not checked (None)."""
    cmd = [sys.executable, "-m", "deploy.cli", "--topology", str(lab.root.parent / "lab.toml"), "--dir",
           str(lab.root), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False, input=input_text)
    if ok is not None:
        assert (proc.returncode == 0) == ok, (proc.returncode, proc.stdout[-2000:] + proc.stderr[-2000:])
    return proc


LabMaker = Callable[..., Lab]


@pytest.fixture
async def make_lab(tmp_path: Path) -> AsyncIterator[LabMaker]:
    """``make_lab(disk_mib, pss=1)``: a lab (write_topology) on a loopback range of its own; every
    daemon is stopped at the end, and one that needed SIGKILL fails the test."""
    labs: list[Lab] = []

    def make(disk_mib: int, pss: int = 1) -> Lab:
        net = random.randrange(30, 250)
        labs.append(Lab(load(write_topology(tmp_path / "lab.toml", net, disk_mib, pss)), tmp_path / "lab"))
        return labs[-1]

    try:
        yield make
    finally:
        for the_lab in labs:
            down_clean(the_lab)


@pytest.fixture
def lab(make_lab: LabMaker) -> Lab:
    """A lab whose machine has one 32 MiB disk."""
    return make_lab(32)


async def until(what: str, timeout_s: float, check: Callable[[], Awaitable[Any]]) -> Any:
    """Poll ``check`` every 0.2 s until it returns something true (returned); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        await asyncio.sleep(0.2)
