"""Helpers of the process-lab kill drills (test_kill_drills.py, test_crash_points_lab.py)."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from deploy.lab import Lab
from deploy.scenario import Scenario


def seed_for_test() -> int:
    """A random seed, printed; ``DRLAB_SEED`` replays a run."""
    seed = int(os.environ.get("DRLAB_SEED") or random.randrange(1, 2**31))
    print(f"DRLAB_SEED={seed}")
    return seed


async def start_protected(lab: Lab) -> tuple[Scenario, Any]:
    """Bring the lab up with its disk a quarter full and protected; returns the scenario and an
    entered admin client (the caller exits it)."""
    sc = Scenario(lab, seed_for_test())
    await lab.init()
    lab.write_configs()
    await asyncio.to_thread(sc.prefill, 0.25)
    await lab.up()
    admin = lab.admin()
    await admin.__aenter__()
    await sc.protect(admin, timeout_s=90)
    return sc, admin
