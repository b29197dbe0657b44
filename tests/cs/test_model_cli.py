"""``drlab site|policy|plan|account|machine|audit|jobs``: the data model from the command line."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Site

from deploy import cli


async def test_the_model_commands(cs_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    site = Site(cs_env, tmp_path)
    try:
        await site.ps()
        await site.mt()
        agent, _ = await site.agent("m1")
    finally:
        await site.close()
    base = ["--cs-url", cs_env.url, "--admin-dir", str(cs_env.admin_files.directory)]

    async def drlab(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, [*base, *argv])
        return code, capsys.readouterr().out

    assert (await drlab("site", "add", "paris", "--kind", "on-prem"))[0] == 0
    assert (await drlab("site", "assign", "paris", agent.component_id))[0] == 0
    code, out = await drlab("machine", "list", "--site", "paris")
    assert code == 0 and agent.component_id in out and "unprotected" in out
    assert (await drlab("policy", "add", "gold", "--rpo-threshold-s", "300", "--multi-machine", "yes"))[0] == 0
    code, out = await drlab("--json", "policy", "list")
    assert {p["name"]: p["rpo_threshold_s"] for p in json.loads(out)} == {"default": 3600, "gold": 300}
    assert (await drlab("policy", "set", "gold", "--retention-window-s", "60"))[0] == 2  # refused: 4 h points
    assert (await drlab("protect", agent.component_id, "--policy", "gold"))[0] == 0
    code, out = await drlab("--json", "machine", "list", "--policy", "gold")
    assert [m["machine_id"] for m in json.loads(out)] == [agent.component_id]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"groups": [{"machines": [agent.component_id]}]}))
    assert (await drlab("plan", "add", "erp", "--file", str(plan)))[0] == 0
    code, out = await drlab("plan", "list")
    assert code == 0 and "erp" in out

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pw\n"))
    assert (await drlab("account", "add", "vc", "--username", "svc"))[0] == 0
    code, out = await drlab("account", "list")
    assert code == 0 and "svc" in out and "s3cret" not in out

    code, out = await drlab("audit", "--entity", "policies")
    assert code == 0 and "| gold " in out and "| create " in out and "app_consistent_interval_s" in out
    code, out = await drlab("--json", "audit", "--limit", "3")
    assert code == 0 and len(json.loads(out)) == 3
    code, out = await drlab("--json", "jobs")
    assert code == 0 and json.loads(out) == []
