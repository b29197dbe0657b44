"""The chaos drill's choice of points to verify and its summary (deploy/drills/chaos_points.py);
the drill itself runs in tests/integration/test_chaos_drill.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from deploy.cli import build_parser
from deploy.drills import chaos_points as cp

pytestmark = pytest.mark.timeout(30)


def point(gen: int, seq: int, hi: int, accuracy: str = "exact") -> dict[str, object]:
    return {"gen": gen, "seq": seq, "wnum_hi": hi, "accuracy": accuracy}


POINTS = [point(1, 1, 0, "none"), point(1, 2, 0, "approximate"), *(point(1, 2 + i, 10 * i) for i in range(1, 21)),
          point(2, 1, 0, "none"), point(2, 2, 0, "approximate"), point(2, 3, 215), point(2, 4, 215)]


def test_a_short_run_verifies_every_exact_point_of_the_cycle() -> None:
    assert cp.choose(POINTS, 150, True, random.Random(1)) == [160, 170, 180, 190, 200, 215]


def test_a_long_run_verifies_the_oldest_the_newest_and_a_sample() -> None:
    chosen = cp.choose(POINTS, 50, False, random.Random(1))
    assert chosen[0] == 10 and chosen[-1] == 215  # the oldest kept, the newest
    middle = chosen[1:-1]
    assert len(middle) == cp.SAMPLE and all(50 < w < 215 and w % 10 == 0 for w in middle)
    assert chosen == cp.choose(POINTS, 50, False, random.Random(1))  # the seed replays it


def test_no_exact_point_no_choice_and_the_newest_even_without_new_points() -> None:
    assert cp.choose([point(1, 1, 0, "none")], 0, True, random.Random(1)) == []
    assert cp.choose(POINTS, 215, True, random.Random(1)) == [215]


def test_the_summary_counts_kills_points_bytes_and_failures(tmp_path: Path) -> None:
    summary = cp.Summary(seed=7, cycles_planned=3)
    summary.cycles = [cp.Cycle(1, "agent", "m1", 1.0, 0.5, recovery_s=3.0, verified=4, bytes_verified=400),
                      cp.Cycle(2, "mt", "mt1", 1.0, 0.5, recovery_s=5.5, verified=2, bytes_verified=200),
                      cp.Cycle(3, "agent", "m1", 1.0, 0.5, failures=["cycle 3: point W 9: MISMATCH"])]
    summary.write(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["kills"] == {"agent": 2, "mt": 1} and doc["cycles"] == 3
    assert doc["points_verified"] == 6 and doc["bytes_verified"] == 600 and doc["recovery_s_max"] == 5.5
    assert doc["failures"] == 1 and doc["failure_list"] == ["cycle 3: point W 9: MISMATCH"]
    assert "failures 1" in "\n".join(summary.lines())


def test_the_command_line_takes_cycles_and_report() -> None:
    args = build_parser().parse_args(["drill", "chaos", "--cycles", "50", "--seed", "9", "--report", "x.json"])
    assert (args.cycles, args.seed, args.report) == (50, 9, "x.json")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["drill", "chaos", "--cycles", "0"])
