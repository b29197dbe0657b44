"""deploy/cli_progress.py: following a CS job and a machine's initial replication against fake
admin clients (plain mode: steps once each, the summary tables, exit codes 0/1/3, ``--json``
prints only JSON), the bar on a pretend terminal, and ``drlab protect --wait`` end to end."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

from deploy import cli, cli_progress
from deploy.cli_progress import follow_job, follow_protect

M, D0, D1 = "c" * 32, "a" * 32, "b" * 32
STEPS = [{"name": "start", "percent": 5.0, "detail": "machine failover job x"},
         {"name": "phase failover", "percent": 60.0, "detail": "41"},
         {"name": "failed over", "percent": 100.0, "detail": "W 41"}]
RESULT = {"wnum": 41, "accuracy": "crash-consistent", "disks": [
    {"disk_id": D0, "name": "disk0", "image_path": "/mt/views/a.img", "point": {"wnum_hi": 41, "accuracy": "exact"}},
    {"disk_id": D1, "name": "disk1", "result": {"replica_path": "/mt/replicas/b.img"}}]}


class FakeApi:
    """``get("/v1/jobs/ID")`` answers the next of ``jobs`` (the last one for ever)."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs, self.calls = jobs, 0

    async def get(self, path: str) -> dict[str, Any]:
        assert path == "/v1/jobs/j1"
        job = self.jobs[min(self.calls, len(self.jobs) - 1)]
        self.calls += 1
        return job


def job(state: str, n_steps: int, **kw: Any) -> dict[str, Any]:
    return {"job_id": "j1", "kind": "machine-failover", "state": state,
            "percent": STEPS[max(0, n_steps - 1)]["percent"], "steps": STEPS[:n_steps], **kw}


def progression(final: dict[str, Any]) -> list[dict[str, Any]]:
    return [job("queued", 0), job("running", 1), job("running", 1), job("running", 2), final]


async def test_a_succeeded_job_prints_each_step_once_then_the_tables() -> None:
    out = io.StringIO()
    api = FakeApi(progression(job("succeeded", 3, result=RESULT)))
    assert await follow_job(api, "j1", 10.0, out=out, tty=False, poll_s=0.0) == 0
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[:3] == ["step 5%: start (machine failover job x)", "step 60%: phase failover (41)",
                         "step 100%: failed over (W 41)"]
    assert text.count("step 60%") == 1 and api.calls == 5
    table = "\n".join(lines[3:])
    assert "| state    | succeeded" in table and "| W        | 41" in table
    row0 = next(line for line in lines if D0 in line)
    assert "disk0" in row0 and "W 41 exact" in row0 and "/mt/views/a.img" in row0
    assert "/mt/replicas/b.img" in next(line for line in lines if D1 in line)
    assert "error" not in table


async def test_a_failed_job_exits_1_with_its_error() -> None:
    out = io.StringIO()
    api = FakeApi(progression(job("failed", 2, error="machine failover x failed: MT down")))
    assert await follow_job(api, "j1", 10.0, out=out, tty=False, poll_s=0.0) == 1
    assert "| error | machine failover x failed: MT down |" in out.getvalue()
    assert out.getvalue().count("step 5%: start") == 1


async def test_a_job_still_running_at_the_timeout_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    api = FakeApi([job("running", 1)])
    assert await follow_job(api, "j1", 0.05, out=out, tty=False, poll_s=0.01) == 3
    assert out.getvalue().count("step 5%: start") == 1 and "| state | running" in out.getvalue()
    assert "still running after" in capsys.readouterr().err


async def test_json_prints_only_the_job() -> None:
    out = io.StringIO()
    final = job("succeeded", 3, result=RESULT)
    assert await follow_job(FakeApi(progression(final)), "j1", 10.0, as_json=True, out=out, tty=False,
                            poll_s=0.0) == 0
    assert json.loads(out.getvalue()) == final


async def test_a_headline_goes_above_the_tables_of_a_finished_job() -> None:
    out = io.StringIO()
    api = FakeApi([job("succeeded", 3)])
    await follow_job(api, "j1", 10.0, out=out, tty=False, poll_s=0.0, headline=lambda j: [f"moved: {j['state']}"])
    assert out.getvalue().splitlines()[3] == "moved: succeeded"


async def test_on_a_terminal_a_bar_shows_the_job_percent() -> None:
    out = io.StringIO()
    assert await follow_job(FakeApi(progression(job("succeeded", 3))), "j1", 10.0, out=out, tty=True,
                            poll_s=0.0) == 0
    text = out.getvalue()
    assert "100%" in text and "machine-failover: failed over" in text and "| state | succeeded" in text


def test_summary_of_a_plan_lists_every_machine_disk() -> None:
    plan = {"job_id": "p", "state": "succeeded", "result": {"machines": {M: {"job_id": "x", "wnum": 7, "disks": [
        {"disk_id": D0, "name": "disk0", "image_path": "/v/a"}]}}}}
    row = next(line for line in cli_progress.summary_tables(plan).splitlines() if D0 in line)
    assert row.split(" | ")[0] == f"| {M}" and "/v/a" in row


# -- a machine's initial replication ---------------------------------------------------------

class FakeDisks:
    """``disks()`` answers the next listing of GET /v1/disks (the last one for ever)."""

    def __init__(self, listings: list[list[dict[str, Any]]]) -> None:
        self.listings, self.calls = listings, 0

    async def disks(self) -> list[dict[str, Any]]:
        listing = self.listings[min(self.calls, len(self.listings) - 1)]
        self.calls += 1
        return listing


def disk(disk_id: str, name: str, state: str, percent: float) -> dict[str, Any]:
    return {"disk_id": disk_id, "machine_id": M, "name": name, "state": state, "percent": percent,
            "ps_id": "p" * 32, "mt_id": "t" * 32}


OTHER = disk("c" * 32, "other", "enabling", 0.0)  # another machine's disk: never shown
REPLICATION = [[disk(D0, "disk0", "enabling", 0.0), disk(D1, "disk1", "enabling", 0.0), OTHER],
               [disk(D0, "disk0", "initial-replication", 42.0), disk(D1, "disk1", "initial-replication", 3.0), OTHER],
               [disk(D0, "disk0", "initial-replication", 45.0), disk(D1, "disk1", "initial-replication", 61.0), OTHER],
               [disk(D0, "disk0", "protected", 100.0), disk(D1, "disk1", "protected", 100.0), OTHER]]


async def test_protect_follows_every_disk_until_protected() -> None:
    out, fake = io.StringIO(), FakeDisks(REPLICATION)
    assert await follow_protect(fake.disks, [D0, D1], 10.0, out=out, tty=False, poll_s=0.0) == 0
    lines = out.getvalue().splitlines()
    assert lines[:7] == ["disk disk0: enabling 0%", "disk disk1: enabling 0%", "disk disk0: initial-replication 42%",
                         "disk disk1: initial-replication 3%", "disk disk1: initial-replication 61%",
                         "disk disk0: protected 100%", "disk disk1: protected 100%"]  # 42 -> 45%: no line
    assert fake.calls == 4 and "other" not in out.getvalue()
    assert sum(1 for line in lines if "| protected |" in line) == 2


async def test_protect_exits_3_when_a_disk_is_not_protected_in_time(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    code = await follow_protect(FakeDisks(REPLICATION[:2]).disks, [D0, D1], 0.05, out=out, tty=False, poll_s=0.01)
    assert code == 3 and "| initial-replication |" in out.getvalue()
    assert "not every disk is protected" in capsys.readouterr().err


async def test_protect_json_prints_only_the_disks() -> None:
    out = io.StringIO()
    assert await follow_protect(FakeDisks(REPLICATION).disks, [D0, D1], 10.0, as_json=True, out=out, tty=False,
                                poll_s=0.0) == 0
    assert [d["state"] for d in json.loads(out.getvalue())] == ["protected", "protected"]


class FakeAdmin(FakeDisks):
    def __init__(self) -> None:
        super().__init__(REPLICATION)
        self.protected: list[tuple[str, Any]] = []
        self.api = None  # never called: the machine is named by its id

    async def protect(self, machine_id: str, policy: str | None = None, **targets: Any) -> list[dict[str, Any]]:
        self.protected.append((machine_id, policy))
        return [disk(D0, "disk0", "enabling", 0.0), disk(D1, "disk1", "enabling", 0.0)]


def test_drlab_protect_wait_on_a_fake_admin(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    admin = FakeAdmin()
    monkeypatch.setattr(cli_progress, "POLL_S", 0.0)
    monkeypatch.setattr(cli, "_admin_call", lambda args, fn: asyncio.run(fn(admin)))
    assert cli.main(["protect", M, "--wait", "--timeout-s", "10"]) == 0
    out = capsys.readouterr().out
    assert admin.protected == [(M, None)] and out.startswith("disk disk0: enabling 0%")
    assert "disk disk1: initial-replication 61%" in out and out.count("| protected |") == 2


def test_the_help_documents_the_exit_codes() -> None:
    assert "3 --wait timed out" in cli.build_parser().format_help()
