"""The recovery drills in short form, every daemon its own process: `drlab drill failback` (protect,
test failover, unplanned failover, commit, cloud boot, reprotect by checksum, planned failback,
protect again — each step checked by the oracle or byte for byte) and `drlab drill site-loss`
(every on-prem process SIGKILLed, failover from the cloud side alone)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.drills import failback
from deploy.drills.common import DrillParams
from tests.integration.conftest import write_topology

pytestmark = pytest.mark.timeout(300)


def topology(tmp_path: Path) -> Path:
    return write_topology(tmp_path / "lab.toml", random.randrange(30, 250), 32, way_back=True)


async def test_failback_drill_runs_the_whole_cycle(tmp_path: Path) -> None:
    seed = random.randrange(1, 2**31)
    print(f"seed {seed}")
    lines: list[str] = []
    params = DrillParams(root=tmp_path / "lab", topology=topology(tmp_path), duration_s=3.0, seed=seed)
    rc = await failback.run(params, say=lines.append)
    text = "\n".join(lines)
    print(text)
    assert rc == 0, text
    for step in ("protect", "test failover + cleanup", "unplanned failover", "the machine runs on its failover views",
                 "commit + boot in the cloud",
                 "reprotect", "failback (planned)", "protect again"):
        assert f"| {step}" in text
    assert "exactly the" in text and "differing blocks" in text  # reprotect sent only what differed
    assert "0 bytes sent" in text  # protecting forward again after failback: nothing differed
    assert "DRILL PASSED" in text


async def test_failback_to_an_alternate_location(tmp_path: Path) -> None:
    """Reprotect onto a new, empty on-prem disk; fail back there; the new machine protects forward."""
    seed = random.randrange(1, 2**31)
    print(f"seed {seed}")
    lines: list[str] = []
    params = DrillParams(root=tmp_path / "lab", topology=topology(tmp_path), duration_s=3.0, seed=seed,
                         alternate=True)
    rc = await failback.run(params, say=lines.append)
    text = "\n".join(lines)
    print(text)
    assert rc == 0, text
    assert "over m1-alt's new disk" in text
    assert "the disk of m1-alt equal its disk exactly" in text
    assert "m1-alt replicates to the cloud again" in text


def test_site_loss_drill_from_the_command_line(tmp_path: Path) -> None:
    seed = random.randrange(1, 2**31)
    cmd = [sys.executable, "-m", "deploy.cli", "--topology", str(topology(tmp_path)), "drill", "site-loss",
           "--drill-dir", str(tmp_path / "lab"), "--duration-s", "3", "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, check=False)
    print(proc.stdout, proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "SIGKILL to " in proc.stdout and "mt9" in proc.stdout and "ps1" in proc.stdout
    assert "byte-exact on every disk" in proc.stdout
    assert "m1-cloud booted on the committed replicas" in proc.stdout
    assert "DRILL PASSED" in proc.stdout
