"""Drills that run every daemon as its own process, on a loopback range of their own."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.lab import Lab
from deploy.topology import load


def write_topology(path: Path, net: int, disk_mib: int) -> Path:
    path.write_text(f"""
[cloud]
cs = {{ address = "127.{net}.2.1", port = 443 }}
mt = [{{ name = "mt1", address = "127.{net}.2.2", data_port = 9443, control_port = 9080 }}]
[onprem]
ps = [{{ name = "ps1", address = "127.{net}.1.1", data_port = 9443 }}]
[[onprem.machines]]
name = "m1"
disks = [{{ name = "disk0", size_mib = {disk_mib} }}]
""")
    return path


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    net = random.randrange(30, 250)
    the_lab = Lab(load(write_topology(tmp_path / "lab.toml", net, 32)), tmp_path / "lab")
    try:
        yield the_lab
    finally:
        left = the_lab.down()
        assert not left, f"daemons needed SIGKILL at teardown: {left}"
