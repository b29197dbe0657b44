"""The CS heartbeat benchmark runs end to end in a few seconds (20 components, 2 s per phase) and
reports what it promises: both phases, positive rates, ordered percentiles, every heartbeat
in the database, JSON and markdown files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cs_heartbeats, loadgen


@pytest.mark.timeout(90)
def test_cs_heartbeats_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cs_heartbeats.main(["--components", "20", "--duration", "2", "--warmup", "0.3", "--concurrency", "8",
                               "--out", str(tmp_path), "--label", "smoke", "--quiet"]) == 0
    [json_file] = tmp_path.glob("cs_heartbeats-*-smoke.json")
    [md_file] = tmp_path.glob("cs_heartbeats-*-smoke.md")
    rep = json.loads(json_file.read_text())
    assert rep["params"] == {"components": 20, "duration_s": 2.0, "warmup_s": 0.3, "concurrency": 8}
    [run] = rep["runs"]
    assert run["engine"] == "sqlite" and run["components_heartbeated"] == 20
    assert set(run["phases"]) == {"ping", "heartbeat"}
    for phase in run["phases"].values():
        assert phase["requests"] > 0 and phase["errors"] == 0 and phase["rate_per_s"] > 0
        assert 0 < phase["p50_ms"] <= phase["p90_ms"] <= phase["p99_ms"] <= phase["max_ms"]
        assert phase["cs_cpu_pct"] > 0
    assert run["heartbeat_to_ping"] > 0
    table = md_file.read_text()
    assert "POST /v1/heartbeat" in table and "GET /v1/ping (no DB)" in table
    assert table in capsys.readouterr().out


def test_percentiles_and_templates() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert loadgen.percentile(values, 50) == 0.05 and loadgen.percentile(values, 99) == 0.099
    assert loadgen.percentile(values, 100) == 0.1 and loadgen.percentile([], 50) == 0.0
    summary = loadgen.summarise(values, errors=2, elapsed_s=2.0)
    assert summary["rate_per_s"] == 50.0 and summary["p50_ms"] == 50.0 and summary["max_ms"] == 100.0
    template = loadgen.Template(loadgen.build_request("POST", "/v1/heartbeat", "h", {"beat": "@@@@@@@@@@"}))
    first, second = template.render(), template.render()
    assert first != second and len(first) == len(second) and b'"beat": "0000000001"' in first
