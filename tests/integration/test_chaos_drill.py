"""The chaos drill in short form, every daemon its own process: `drlab drill chaos --cycles 5`
SIGKILLs a random daemon (agent, PS, MT or CS) under load in each cycle, restarts it, waits for
the recovery and checks every exact recovery point of the cycle with the oracle; then the MT's
apply log. The seed is fixed (38: every kind of daemon is killed, the agent twice) and logged;
DRLAB_CHAOS_SEED=S replays another."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import write_topology

SEED = 38
CYCLES = 5


@pytest.mark.timeout(330)
def test_chaos_drill_five_cycles_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("DRLAB_CHAOS_SEED") or SEED)
    print(f"DRLAB_CHAOS_SEED={seed}")
    topology = write_topology(tmp_path / "lab.toml", random.randrange(30, 250), 32)
    report = tmp_path / "chaos.json"
    cmd = [sys.executable, "-m", "deploy.cli", "--topology", str(topology), "drill", "chaos", "--cycles",
           str(CYCLES), "--seed", str(seed), "--duration-s", "2", "--drill-dir", str(tmp_path / "lab"),
           "--report", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=320, check=False)
    print(proc.stdout, proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert f"seed {seed}" in proc.stdout.splitlines()[0]
    assert "CHAOS PASSED" in proc.stdout
    summary = json.loads(report.read_text())
    assert summary["seed"] == seed
    assert summary["cycles"] == CYCLES and sum(summary["kills"].values()) == CYCLES
    assert summary["failures"] == 0 and summary["failure_list"] == []
    assert summary["points_verified"] > 0 and summary["bytes_verified"] > 0
    assert summary["apply_log"].startswith("no batch applied twice")
    for cycle in summary["per_cycle"]:  # every kill followed by a recovery and verified points
        assert cycle["daemon"] in ("agent", "ps", "mt", "cs")
        assert 0 < cycle["recovery_s"] < 180 and cycle["bytes_verified"] > 0
        assert cycle["verified"] >= cycle["points"] > 0  # a short run: every exact point the cycle made
        assert cycle["newest_wnum"] >= cycle["acked_wnum"] >= cycle["kill_wnum"] > 0
        assert f"cycle {cycle['number']}: SIGKILL the {cycle['daemon']} ({cycle['node']})" in proc.stdout
    if seed == SEED:
        assert summary["kills"] == {"agent": 2, "cs": 1, "mt": 1, "ps": 1}
