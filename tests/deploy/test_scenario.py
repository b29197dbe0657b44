"""Scenario bookkeeping from the write log: the agent's write counter is not the prefill's numbers."""

from __future__ import annotations

from pathlib import Path

from agent.workload import prefill
from common import datagen
from common.wire import writelog as wl
from deploy.lab import Lab
from deploy.scenario import Scenario
from deploy.topology import DEFAULT_TOPOLOGY, load

SEED = 31


def test_last_wnum_is_the_agents_counter_and_ignores_the_prefill(tmp_path: Path) -> None:
    sc = Scenario(Lab(load(DEFAULT_TOPOLOGY), tmp_path / "lab"), SEED)
    sc.log_path.parent.mkdir(parents=True)
    last = prefill(tmp_path / "d0.img", 0, 1 << 20, 0.5, sc.log_path, SEED, chunk_bytes=64 << 10)
    assert last == 8 and sc.last_wnum() == 0  # the initial replication's point (W 0) is not behind
    with wl.LogWriter(sc.log_path, SEED, datagen.profile("mixed")) as writer:
        writer.append(wl.LogRecord(last + 1, 0, wl.KIND_WRITE, 0, 4096, 10**18))
        assert sc.last_wnum() == last + 1
        writer.append(wl.LogRecord(last + 2, 0, wl.KIND_DOUBT, 4096, 4096, 10**18 + 1))
    assert sc.last_wnum() == last + 2 and [r.wnum for r in sc.acked_writes()] == [last + 1]
