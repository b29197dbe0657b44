"""The failover and PS-switch drills in short form, every daemon its own process: `drlab drill
failover` (test failover to latest, to a point in time and to latest-app-consistent, planned
failover — each checked by the oracle or byte for byte) and `drlab drill ps-switch` (a switch under
load with the old PS alive, a balance with the new PS killed — the oracle after each)."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.drills import failover
from deploy.drills.common import DrillParams
from tests.integration.conftest import write_topology

pytestmark = pytest.mark.timeout(90)


def params(tmp_path: Path, pss: int = 1) -> DrillParams:
    seed = random.randrange(1, 2**31)
    print(f"seed {seed}")
    topology = write_topology(tmp_path / "lab.toml", random.randrange(30, 250), 32, pss=pss)
    return DrillParams(root=tmp_path / "lab", topology=topology, duration_s=2.0, seed=seed)


async def test_failover_drill_verifies_each_kind_of_failover(tmp_path: Path) -> None:
    lines: list[str] = []
    rc = await failover.run(params(tmp_path), say=lines.append)
    text = "\n".join(lines)
    print(text)
    assert rc == 0, text
    for step in ("protect", "test failover to latest + cleanup", "test failover to a point in time + cleanup",
                 "test failover to latest-app-consistent + cleanup", "planned failover"):
        assert f"| {step}" in text
    assert "(of the middle acknowledged write) -> W " in text
    assert "bookmark group-app:drill-app-" in text
    assert "every image equals its source disk exactly" in text
    assert "DRILL PASSED" in text


def test_ps_switch_drill_from_the_command_line(tmp_path: Path) -> None:
    p = params(tmp_path)  # one on-prem PS: the drill's lab adds the second (ps2)
    cmd = [sys.executable, "-m", "deploy.cli", "--topology", str(p.topology), "drill", "ps-switch",
           "--drill-dir", str(p.root), "--duration-s", "2", "--seed", str(p.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=85, check=False)
    print(proc.stdout, proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "has one on-prem PS: the drill's lab adds ps2 at " in proc.stdout
    # protection picks either PS (A); the switch moves the machine to the other (B), which is then killed
    moved = re.search(r"(ps[12]) -> (ps[12]) \(steps plan, reassign, drain, fence, verify\); generation (\d+) kept",
                      proc.stdout)
    assert moved and moved[1] != moved[2], proc.stdout
    assert "without gap or duplicate" in proc.stdout
    gen = int(moved[3]) + 1
    assert f"{moved[2]} SIGKILLed; {moved[2]} -> {moved[1]} under generation {gen} (ps-switch)" in proc.stdout
    assert proc.stdout.count("byte-exact (the oracle)") >= 2
    assert "DRILL PASSED" in proc.stdout
