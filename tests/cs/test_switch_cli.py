"""``drlab ps switch|balance``: arguments, the request body, and calls against a real CS."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Site

from deploy import cli, cli_ps


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(list(argv))


def test_switch_arguments_make_the_body_with_only_what_was_given() -> None:
    args = parse("ps", "switch", "a" * 32, "--to", "b" * 32, "--old-ps-dead", "--job-timeout-s", "60")
    assert args.func is cli_ps.cmd_switch
    assert cli_ps.body_of(args) == {"to_ps_id": "b" * 32, "old_ps_dead": True, "timeout_s": 60.0}
    assert cli_ps.body_of(parse("ps", "switch", "a" * 32)) == {}
    args = parse("ps", "balance", "a" * 32, "--machine", "1" * 32, "--machine", "2" * 32)
    assert args.func is cli_ps.cmd_balance and cli_ps.body_of(args) == {"machine_ids": ["1" * 32, "2" * 32]}


def test_balance_needs_machines() -> None:
    with pytest.raises(SystemExit):
        parse("ps", "balance", "a" * 32)


@pytest.mark.timeout(60)
async def test_the_cli_queues_a_job_or_says_why_not(cs_env: Any, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(cs_env, tmp_path)
    try:
        ps1, ps2 = await site.ps("ps1"), await site.ps("ps2", {"data": 19444})
        await site.mt()
        agent, _ = await site.agent("m1")
        await cs_env.admin.protect(agent.component_id)
        base = ["--cs-url", cs_env.url, "--admin-dir", str(cs_env.admin_files.directory)]
        code = await asyncio.to_thread(cli.main, [*base, "ps", "balance", ps2.component_id,
                                                  "--machine", agent.component_id])
        assert code == 2 and "has no disk on process server" in capsys.readouterr().err
        code = await asyncio.to_thread(cli.main, [*base, "ps", "switch", ps1.component_id, "--to", ps2.component_id])
        out = capsys.readouterr().out
        assert code == 0 and "queued" in out
        job_id = out.split()[1]
        assert (await cs_env.admin.job(job_id))["kind"] == "ps-switch"
    finally:
        await site.close()
