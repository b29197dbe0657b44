"""Secrets never show: not in reprs, not in log output, not in the database."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
from cshelpers import Site, settings

from common import auth
from cs.ca import CA
from cs.db.meta import AuthParams
from cs.db.models import Disk
from cs.registration import RegisterRequest
from tests.conftest import stored_bytes


def test_reprs_hide_secrets(tmp_path: Path) -> None:
    phrase = auth.new_passphrase()
    assert phrase.value not in repr(phrase) and phrase.value not in str(phrase) and phrase.value not in f"{phrase}"
    params = AuthParams(key=b"K" * 32, salt=b"S" * 16, kdf={"n": 2})
    assert "KKKK" not in repr(params) and base64.b64encode(b"K" * 32).decode() not in repr(params)
    ca = CA(key_pem=b"-----BEGIN PRIVATE KEY-----secret", cert_pem=b"cert")
    assert "secret" not in repr(ca)
    disk = Disk(disk_id="ab" * 16, name="d", generation=1, state="enabling", key_b64="c2VjcmV0LWtleQ==")
    assert "c2VjcmV0" not in repr(disk)
    req = RegisterRequest("ab" * 16, "ps", "h", "127.0.0.1", {}, "v", b"csr", b"n", proof=b"PROOFBYTES")
    assert "PROOFBYTES" not in repr(req)


async def _full_flow(site: Site) -> list[str]:
    """Register, heartbeat, report, protect, read settings, fail over; the secrets involved."""
    ps, mt = await site.ps(), await site.mt()
    agent, names = await site.agent()
    await ps.api.post("/v1/heartbeat", {"metrics": {}})
    await site.env.admin.protect(agent.component_id)
    key_b64 = (await settings(ps))["document"]["disks"][0]["key_b64"]
    job_id = await site.env.admin.failover(names["disk0"], "latest")
    await mt.api.post(f"/v1/jobs/{job_id}/result", {"state": "succeeded", "result": {}})
    return [site.env.passphrase.value, key_b64]


async def test_no_secret_in_rendered_logs(cs_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    site = Site(cs_env, tmp_path)
    try:
        secrets = await _full_flow(site)
    finally:
        await site.close()
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert "registered" in text and "protected" in text  # the flow did log
    for secret in secrets:
        assert secret not in text


async def test_no_secret_in_raw_log_events(cs_env: Any, tmp_path: Path) -> None:
    site = Site(cs_env, tmp_path)
    try:
        with structlog.testing.capture_logs() as events:
            secrets = await _full_flow(site)
    finally:
        await site.close()
    assert any(e["event"] == "registered" for e in events)
    dump = repr(events)
    for secret in secrets:
        assert secret not in dump


async def test_database_keeps_no_passphrase(cs_env: Any) -> None:
    blob = await stored_bytes(cs_env)
    assert len(blob) > 100 and cs_env.passphrase.value.encode() not in blob
