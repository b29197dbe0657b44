"""``drlab ps list`` and the table ``drlab ps balance`` prints first (deploy/cli_ps_load.py), pure:
a row per PS (cache free %, backlog MB, throughput MB/s, machines, services not running) and a
row per machine with its churn; values a PS does not report show ``-``."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest

from deploy import cli_ps, cli_ps_load

A, B, M1, M2 = "a" * 32, "b" * 32, "1" * 32, "2" * 32
COMPONENTS: list[dict[str, Any]] = [
    {"component_id": B, "role": "ps", "host_id": "ps-b", "metrics": {}},
    {"component_id": A, "role": "ps", "host_id": "ps-a", "metrics": {
        "cache_free_pct": 42.25, "upload_bytes_per_s": 12_345_678, "machine_count": 2,
        "services": {"ingest": "running", "uploader": "stopped"},
        "disks": {"d1": {"backlog_bytes": 1_500_000}, "d2": {"backlog_bytes": 500_000}},
        "machines": {M2: {"churn_bytes_per_s": 2_000_000}, M1: {"churn_bytes_per_s": 250_000}}}},
    {"component_id": M1, "role": "agent", "host_id": "web1", "metrics": {}},
    {"component_id": "c" * 32, "role": "mt", "host_id": "mt1", "metrics": {"cache_free_pct": 1.0}},
]


def test_rows_per_ps_then_per_machine_sorted_by_name() -> None:
    assert cli_ps_load.load_rows(COMPONENTS) == [
        ["ps-a", "42.2", "2.0", "12.35", "2", "stopped: uploader", "", ""],
        ["", "", "", "", "", "", "22222222", "2.00"],  # no agent known: the id's start
        ["", "", "", "", "", "", "web1", "0.25"],
        ["ps-b", "-", "-", "-", "-", "-", "", ""],  # an older PS reports none of it
    ]
    table = cli_ps_load.render(COMPONENTS)
    assert table.splitlines()[1].startswith("| PS ") and "throughput MB/s" in table and "mt1" not in table


def test_no_ps_is_an_empty_table() -> None:
    assert cli_ps_load.load_rows([]) == [] and "cache free %" in cli_ps_load.render([])


class FakeApi:
    def __init__(self) -> None:
        self.posted: list[tuple[str, Any]] = []

    async def get(self, path: str, params: Any = None) -> dict[str, Any]:
        assert path == "/v1/components"
        return {"items": COMPONENTS, "next": None}

    async def post(self, path: str, body: Any) -> dict[str, Any]:
        self.posted.append((path, body))
        return {"job_id": "j1"}


def test_balance_prints_the_load_table_before_it_moves(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(to=None, machines=[M1], old_ps_dead=False, job_timeout_s=None, wait=False,
                              json=False, timeout_s=1.0)
    api = FakeApi()
    assert asyncio.run(cli_ps._submit(api, args, f"/v1/ps/{A}/balance")) == 0
    out = capsys.readouterr().out
    assert out.index("ps-a") < out.index("job j1 queued") and api.posted == [(f"/v1/ps/{A}/balance",
                                                                            {"machine_ids": [M1]})]
