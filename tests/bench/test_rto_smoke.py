"""The RTO benchmark's quick version runs end to end (1 GiB sparse disk, a short accelerated
journal, the CS leg in a small process lab) and reports what it promises: both failover cases timed
in order (view ready <= job <= writable) without an image file (the default), the machine's write
read back, the oracle's checks of the exported views passed, the with-image job timed (slower than
the view alone), references measured and the ratios and totals computed from the figures; nothing
left behind in the temp dir."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from bench import rto


@pytest.mark.timeout(120)
def test_rto_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(Path(tempfile.gettempdir()).glob("drlab-bench-rto-*"))
    assert rto.main(["--quick", "--seed", "7", "--out", str(tmp_path)]) == 0
    assert set(Path(tempfile.gettempdir()).glob("drlab-bench-rto-*")) == before  # cleaned up
    [json_file] = tmp_path.glob("rto-*-quick.json")
    [md_file] = tmp_path.glob("rto-*-quick.md")
    rep = json.loads(json_file.read_text())
    assert rep["quick"] is True and rep["seed"] == 7 and rep["oracle_ok"] is True
    cs = rep["cs_leg"]
    assert cs["oracle_ok"] and not cs["daemons_killed"] and cs["workload_writes"] > 0
    for r in cs["rounds"]:
        assert 0 < r["mt_job_s"] < r["command_to_succeeded_s"]
        assert r["cs_leg_s"] == pytest.approx(r["command_to_succeeded_s"] - r["mt_job_s"], abs=2e-4)
    [size] = rep["sizes"]
    assert size["size_gib"] == 1 and size["journal"]["batches"] == rep["params"]["batches"]
    assert size["journal"]["replica_allocated_bytes"] < 1 << 30  # sparse
    refs = size["references"]
    assert refs["cp_sparse_s"] > 0 and refs["make_image_far_s"] > 0
    latest, far = size["cases"]["latest"], size["cases"]["far"]
    assert latest["point"] == "latest" and latest["undo_extents"] == 0
    assert far["undo_extents"] > 0 and far["wnum_hi"] < latest["wnum_hi"]
    for case in (latest, far):
        assert case["oracle_ok"] and case["write_read_back_ok"], case
        assert 0 < case["view_ready_s"] <= case["job_s"] <= case["writable_s"]
        assert case["command_to_writable_s"] == pytest.approx(case["writable_s"] + cs["cs_leg_median_s"], abs=2e-4)
        assert case["target_met"] == (case["command_to_writable_s"] <= rep["target_s"])
        assert case["no_image_file"] and case["image_made"] and case["export_s"] > 0
        assert case["view_ready_s"] < case["image_job_s"] and 0 < case["image_s"] < case["image_job_s"]
    assert rep["image_job_max_s"] == max(latest["image_job_s"], far["image_job_s"])
    ratios = size["ratios"]
    assert ratios["latest_to_cp"] == pytest.approx(latest["writable_s"] / refs["cp_sparse_s"], rel=1e-3, abs=1e-3)
    assert ratios["far_to_make_image"] == pytest.approx(far["writable_s"] / refs["make_image_far_s"], rel=1e-3,
                                                        abs=1e-3)
    table = md_file.read_text()
    assert table.startswith("### ") and "| 1 GiB | latest |" in table and "| 1 GiB | far |" in table
    assert table in capsys.readouterr().out


def test_far_point_lies_inside_the_journal() -> None:
    p = rto.Params.of(quick=False)
    step = int(p.span_h * 3600 * 10**9 / p.batches)
    t = rto.far_time_ns(p)
    assert rto.T0_NS + 2 * step < t < rto.T0_NS + p.batches * step // 10  # early, after the first batches
    assert rto.Params.of(quick=True).sizes_gib == (1,) and p.sizes_gib == (1, 4, 16)
