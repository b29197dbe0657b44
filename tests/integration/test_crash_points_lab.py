"""Deterministic kills at named crash points (common/crashpoints.py) of the real MT and PS daemons,
every daemon its own process, under a workload: the daemon is stopped cleanly, started again
with ``DRLAB_CRASH_AT=component.point:n`` so it dies (``os._exit(137)``, what SIGKILL leaves) the
n-th time it reaches the point, then started normally. Afterwards the oracle verifies recovery
points byte for byte (spread over the run, and "latest" holding every acknowledged write), and the
MT's apply log (mt/applylog.py) shows no batch applied twice. ``DRLAB_SEED`` replays a run."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from common import crashpoints, errors
from deploy.lab import Lab
from deploy.scenario import Scenario
from deploy.topology import Node
from mt import applylog
from tests.integration.conftest import until
from tests.integration.labdrills import start_protected

pytestmark = pytest.mark.timeout(150)

# (the daemon, the crash points it passes in order: several for a crash during recovery). The MT's
# after_journal_fsync, after_replica_write and before_commit each kill a real process too, in
# tests/mt/test_mt_applylog.py and test_mt_journal.py (a child applying staged batches; images and
# apply log checked); here the MT case passes after_replica_write, then dies again mid-rollback.
CASES = {
    "mt.mid_rollback": ("mt", ["after_replica_write:4", "mid_rollback:1"]),  # dies again while recovering
    "ps.after_cache_write": ("ps", ["after_cache_write:4"]),
    "ps.after_upload": ("ps", ["after_upload:4"]),
}


async def answers(sc: Scenario) -> bool:
    try:
        return bool(await sc.points())
    except errors.DrlabError:
        return False


def running(lab: Lab, node: Node) -> bool:
    return next(bool(row["running"]) for row in lab.status() if row["name"] == node.name)


async def crash_at(lab: Lab, node: Node, spec: str, timeout_s: float = 30.0) -> None:
    """Restart ``node`` with one crash point set and wait until it has died there."""
    os.environ["DRLAB_CRASH_AT"] = spec
    try:
        lab.start_node(node)
    finally:
        del os.environ["DRLAB_CRASH_AT"]
    for _ in range(int(timeout_s * 10)):
        if not running(lab, node):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{node.name} did not reach crash point {spec} within {timeout_s:.0f} s")


@pytest.mark.parametrize("case", list(CASES))
async def test_kill_at_a_named_point_then_restart_loses_nothing_and_applies_nothing_twice(lab: Lab,
                                                                                          case: str) -> None:
    component, specs = CASES[case]
    for spec in specs:
        crashpoints.parse(f"{component}.{spec}")
    sc, admin = await start_protected(lab)
    try:
        node = lab.topology.mts[0] if component == "mt" else lab.topology.pss[0]
        proc = sc.start_workload(rate_mb_s=6, duration_s=6)
        await asyncio.sleep(2)
        lab.kill_node(node, signal.SIGTERM)  # a clean stop: the only hard death is the crash point's
        for spec in specs:
            await crash_at(lab, node, f"{component}.{spec}")
        lab.start_node(node)
        stats = await asyncio.to_thread(sc.finish_workload, proc, 90)
        assert stats["writes"] > 0
        await until("the restarted daemons answer", 60, lambda: answers(sc))
        await sc.wait_drained(90)
        checks = [await sc.failover_and_verify(admin, {"time_ns": t}, f"T{i}")
                  for i, t in enumerate(sc.spread_times(2))]
        checks.append(await sc.failover_and_verify(admin, "latest", "latest"))
        bad = [(c.label, c.detail) for c in checks if not c.ok]
        assert not bad, bad
        if component == "mt":  # each MT kill left a half-applied batch that the next start rolled back
            rollbacks = lab.log_path(node).read_text().count("journal_rollback")
            assert rollbacks >= len(specs), f"{rollbacks} rollbacks logged for {len(specs)} kills"
        lab.kill_node(lab.topology.mts[0], signal.SIGTERM)  # the apply log is read on a stopped MT
        report = applylog.check_apply_log(lab.node_dir(lab.topology.mts[0]))
        print("apply log:", report.to_doc())
        assert report.ok and report.batches > 0, report.to_doc()
    finally:
        await admin.__aexit__(None, None, None)
