"""Troubleshooting a PS over real sockets (ps/check.py, deploy/pscheck.py, ps/health.py): the
end-to-end check passes against an in-process PS and names the failed step against a closed
port, a plain (non-TLS) listener and a PS of another CA; ``GET /`` is 400 with or without a
certificate; the check routes refuse bad input; the heartbeat carries the services' state and
each machine's average churn."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from psbatches import make_batch
from psfakecs import FakeCS
from psfakemt import FakeMT

from common import tls
from common.config import PSConfig
from deploy import cli, pscheck
from ps import check as pscheck_routes
from ps.service import PSService

DISK = "cd" * 16
MACHINE = "b1" * 16
PS_ID = "23" * 16
KEY = os.urandom(32)


def issue(ca: tuple[bytes, bytes], directory: Path, cid: str, role: str) -> tls.IdentityFiles:
    files = tls.IdentityFiles(directory)
    meta = {"component_id": cid, "role": role}
    tls.issue_local(*ca, files, component_id=cid, role=role, hosts=["127.0.0.1"], meta=meta)
    return files


@dataclass
class Lab:
    ps: PSService
    cs: FakeCS
    admin: tls.IdentityFiles
    agent: tls.IdentityFiles
    tmp: Path

    @property
    def port(self) -> int:
        return self.ps.data_port

    async def call(self, ctx: ssl.SSLContext, method: str, path: str, data: bytes | None = None
                   ) -> tuple[int, Any]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            async with session.request(method, f"https://127.0.0.1:{self.port}{path}", data=data) as resp:
                return resp.status, await resp.json(content_type=None)


async def wait_until(pred: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    ca = tls.make_ca()
    cs, mt = FakeCS(), FakeMT(KEY)
    cs_url = await cs.start(issue(ca, tmp_path / "cs", "cc" * 16, "cs"))
    mt_url = await mt.start(issue(ca, tmp_path / "mt", "11" * 16, "mt"))
    cs.publish({"disks": [{"disk_id": DISK, "machine_id": MACHINE, "generation": 1, "size_bytes": 1 << 20,
                           "mt_url": mt_url, "mt_control_url": mt_url, "key_epoch": 1,
                           "key_b64": base64.b64encode(KEY).decode()}]})
    cfg = PSConfig(data_dir=tmp_path / "ps", cs_url=cs_url, data_port=0, heartbeat_interval_s=0.2,
                   settings_wait_s=1.0, retry_max_backoff_s=0.2, request_timeout_s=5.0, cache_max_bytes=1 << 22)
    issue(ca, cfg.data_dir / "identity", PS_ID, "ps")
    ps = PSService(cfg, poll_interval_s=0.1)
    await ps.start()
    try:
        await ps.wait_settings()
        yield Lab(ps, cs, issue(ca, tmp_path / "admin", "ad" * 16, "admin"),
                  issue(ca, tmp_path / "agent", MACHINE, "agent"), tmp_path)
    finally:
        await ps.stop()
        await mt.stop()
        await cs.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
async def test_every_step_passes_against_a_running_ps_and_leaves_nothing(lab: Lab) -> None:
    report = await pscheck.check("127.0.0.1", lab.port, tls.client_context(lab.admin), 20.0)
    assert [s.name for s in report.steps] == list(pscheck.STEPS)
    assert report.ok and all(s.ok for s in report.steps), report
    assert "PS " + PS_ID in report.steps[2].detail
    scratch = lab.ps.cfg.data_dir / "check"
    assert scratch.is_dir() and not list(scratch.iterdir())  # the test upload was removed
    assert lab.ps.cache is not None and lab.ps.cache.disks() == []  # nothing went near a disk's stream
    lines = pscheck.render(report, "127.0.0.1", lab.port)
    assert len(lines) == 6 and all(" ok " in line for line in lines[:5]) and "every step passed" in lines[-1]


@pytest.mark.timeout(60)
async def test_a_closed_port_fails_at_tcp_connect(lab: Lab) -> None:
    report = await pscheck.check("127.0.0.1", closed_port(), tls.client_context(lab.admin), 10.0)
    assert not report.ok and [s.name for s in report.steps] == ["TCP connect"]
    assert pscheck.render(report, "127.0.0.1", 1)[-1].startswith("TCP connect failed: ")


@pytest.mark.timeout(60)
async def test_a_plain_listener_fails_at_the_tls_handshake(lab: Lab) -> None:
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        report = await pscheck.check("127.0.0.1", port, tls.client_context(lab.admin), 10.0)
    finally:
        await runner.cleanup()
    assert [(s.name, s.ok) for s in report.steps] == [("TCP connect", True), ("TLS handshake", False)]
    assert pscheck.render(report, "127.0.0.1", port)[-1].startswith("TLS handshake failed: ")


@pytest.mark.timeout(60)
async def test_a_ps_of_another_ca_fails_certificate_verification(lab: Lab) -> None:
    stranger = issue(tls.make_ca(), lab.tmp / "other-admin", "ae" * 16, "admin")
    report = await pscheck.check("127.0.0.1", lab.port, tls.client_context(stranger), 10.0)
    failed = report.failed
    assert failed is not None and failed.name == "TLS handshake"
    assert "certificate verification failed" in failed.detail, failed.detail


@pytest.mark.timeout(60)
async def test_the_cli_prints_the_steps_and_exits_0_1_or_2(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--admin-dir", str(lab.admin.directory), "ps", "check", "127.0.0.1"]
    assert await asyncio.to_thread(cli.main, [*base, str(lab.port), "--timeout", "20"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}" in out for name in pscheck.STEPS) and "FAILED" not in out
    assert await asyncio.to_thread(cli.main, [*base, str(closed_port()), "--timeout", "5"]) == 1
    assert "TCP connect failed:" in capsys.readouterr().out
    for bad in (["70000"], ["x"], [str(lab.port), "--timeout", "0"], [str(lab.port), "--timeout", "nan"]):
        with pytest.raises(SystemExit) as exc:
            cli.main([*base, *bad])
        assert exc.value.code == 2
    missing = ["--admin-dir", str(lab.tmp / "nobody"), "ps", "check", "127.0.0.1", str(lab.port)]
    assert await asyncio.to_thread(cli.main, missing) == 2
    assert "no admin identity" in capsys.readouterr().err


@pytest.mark.timeout(60)
async def test_get_root_is_400_saying_it_is_the_data_port(lab: Lab) -> None:
    browser = ssl.create_default_context()
    browser.check_hostname, browser.verify_mode = False, ssl.CERT_NONE  # the user accepted the warning
    for ctx in (browser, tls.client_context(lab.admin)):
        status, body = await lab.call(ctx, "GET", "/")
        assert status == 400 and body["code"] == "bad_request" and "data port" in body["message"]
    status, _ = await lab.call(browser, "GET", "/v1/check")  # anything else still needs a certificate
    assert status == 401


@pytest.mark.timeout(60)
async def test_the_check_routes_refuse_bad_input_and_other_roles(lab: Lab) -> None:
    admin, agent = tls.client_context(lab.admin), tls.client_context(lab.agent)
    assert (await lab.call(agent, "GET", "/v1/check"))[0] == 403
    assert (await lab.call(agent, "PUT", "/v1/check/upload/abc", b"x"))[0] == 403
    status, body = await lab.call(admin, "PUT", "/v1/check/upload/Bad_Id", b"x")
    assert status == 400 and "check id" in body["message"]
    assert (await lab.call(admin, "PUT", "/v1/check/upload/big", b"x" * (pscheck_routes.MAX_BYTES + 1)))[0] == 413
    assert (await lab.call(admin, "DELETE", "/v1/check/upload/absent"))[0] == 404
    scratch = lab.ps.cfg.data_dir / "check"
    assert not scratch.exists() or not list(scratch.iterdir())  # nothing stored by the refusals
    for n in range(pscheck_routes.MAX_FILES):
        assert (await lab.call(admin, "PUT", f"/v1/check/upload/f{n}", b"x"))[0] == 201
    assert (await lab.call(admin, "PUT", "/v1/check/upload/one-more", b"x"))[0] == 409
    assert len(list(scratch.iterdir())) == pscheck_routes.MAX_FILES


@pytest.mark.timeout(60)
async def test_the_heartbeat_carries_services_and_each_machines_churn(lab: Lab) -> None:
    await wait_until(lambda: any(b.get("machine_count") == 1 for b in lab.cs.heartbeats))  # after the settings
    beat = [b for b in lab.cs.heartbeats if b.get("machine_count") == 1][-1]
    assert beat["services"] == {"ingest": "running", "uploader": "running", "control": "running",
                                "discovery": "running", "push_install": "running"}
    assert beat["machine_count"] == 1 and set(beat["machines"]) == {MACHINE}
    agent = tls.client_context(lab.agent)
    for seq in range(1, 9):
        status, _ = await lab.call(agent, "PUT", f"/v1/disks/{DISK}/batches/1/{seq}",
                                   make_batch(DISK, 1, seq, data=os.urandom(64 * 1024)))
        assert status == 201
    seen = len(lab.cs.heartbeats)
    await wait_until(lambda: any(b["machines"][MACHINE]["churn_bytes_per_s"] > 0 for b in lab.cs.heartbeats[seen:]))
    assert lab.ps.uploaders is not None
    pipeline = lab.ps.uploaders.pipelines[DISK]
    task = pipeline._task  # a crashed pipeline: its task ends
    assert task is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    seen = len(lab.cs.heartbeats)
    await wait_until(lambda: any(b["services"]["uploader"] == "stopped" for b in lab.cs.heartbeats[seen:]))
    assert lab.cs.heartbeats[-1]["services"]["ingest"] == "running"
