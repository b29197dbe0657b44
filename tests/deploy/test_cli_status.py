"""``drlab whoami|rpo``, ``drlab cs ping|routes`` (deploy/cli_status.py) against a real CS on loopback,
and ``drlab cs passphrase rotate`` defaulting to the lab's CS directory (deploy/cli_cs.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from common.config import CSConfig
from cs.init import init_cs
from deploy import cli
from deploy.cli_status import route_rows, rpo_rows
from tests.deploy.admincli import admin_argv, drlab, json_out


def test_rpo_rows_worst_first_with_host_and_over_the_threshold() -> None:
    machines = {"a" * 32: {"rpo_s": 5.0, "threshold_s": 60, "disks": {"d1": 5.0}},
                "b" * 32: {"rpo_s": 90.25, "threshold_s": 60, "disks": {"d2": 90.25, "d3": 1.0}}}
    rows = rpo_rows(machines, {"a" * 32: "m1"})
    assert rows == [["b" * 32, "-", "90.2", "60", "yes", 2], ["a" * 32, "m1", "5.0", "60", "no", 1]]
    assert rpo_rows({}, {}) == []


def test_route_rows_by_path_with_roles_and_tag_filter() -> None:
    doc = {"paths": {"/v1/z": {"get": {"summary": "Z.", "x-roles": ["admin"], "tags": ["z"]}},
                     "/v1/a": {"post": {"summary": "A.", "security": [], "tags": ["a"]}}}}
    assert route_rows(doc) == [["POST", "/v1/a", "public", "A."], ["GET", "/v1/z", "admin", "Z."]]
    assert route_rows(doc, "z") == [["GET", "/v1/z", "admin", "Z."]]


@pytest.mark.timeout(60)
async def test_whoami_ping_and_a_cs_that_is_not_there(cs_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert await drlab(cs_env, "whoami") == 0
    assert "(admin, by certificate)" in capsys.readouterr().out
    assert await drlab(cs_env, "--json", "whoami") == 0
    assert json_out(capsys.readouterr().out)["role"] == "admin"
    assert await drlab(cs_env, "cs", "ping") == 0
    assert "CS alive: answered admin" in capsys.readouterr().out
    argv = admin_argv(cs_env, "whoami")
    argv[argv.index(cs_env.url)] = "https://127.0.0.1:9"  # nothing listens: a CS error, exit 2
    assert await asyncio.to_thread(cli.main, argv) == 2
    assert capsys.readouterr().err.startswith("drlab: error:")


@pytest.mark.timeout(60)
async def test_rpo_without_points_then_a_bad_since(cs_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert await drlab(cs_env, "rpo", "--history") == 0
    assert "no machine has a point yet" in capsys.readouterr().out
    assert await drlab(cs_env, "--json", "rpo") == 0
    doc = json_out(capsys.readouterr().out)
    assert doc["machines"] == {} and "history" in doc and doc["sample_s"] > 0
    assert await drlab(cs_env, "rpo", "--since-ns", "-1") == 2
    assert "--since-ns" in capsys.readouterr().err


@pytest.mark.timeout(60)
async def test_routes_lists_the_api_and_an_unknown_tag_exits_2(cs_env: Any,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert await drlab(cs_env, "cs", "routes", "--tag", "plans") == 0
    out = capsys.readouterr().out
    assert "/v1/plans/{name}/failover" in out and "/v1/disks" not in out
    assert await drlab(cs_env, "cs", "routes") == 0
    out = capsys.readouterr().out
    assert "/v1/openapi.json" in out and "public" in out and "/v1/dashboard/rpo" in out
    assert await drlab(cs_env, "cs", "routes", "--tag", "no-such-tag") == 2
    assert "no-such-tag" in capsys.readouterr().err


@pytest.mark.timeout(60)
async def test_passphrase_rotate_defaults_to_the_labs_cs_dir(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    lab = tmp_path / "lab"
    before = (await init_cs(CSConfig(data_dir=lab / "cs"), hosts=["127.0.0.1"])).value
    assert await asyncio.to_thread(cli.main, ["--dir", str(lab), "cs", "passphrase", "rotate"]) == 0
    after = (lab / "cs" / "passphrase.txt").read_text().strip()
    assert after != before and after in capsys.readouterr().out
    empty = tmp_path / "no-lab"  # no CS there: a clear error, exit 2, nothing written
    assert await asyncio.to_thread(cli.main, ["--dir", str(empty), "cs", "passphrase", "rotate"]) == 2
    assert "not an initialised CS" in capsys.readouterr().err and not empty.exists()
