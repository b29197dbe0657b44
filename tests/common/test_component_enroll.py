"""A component registers from an enrollment token file (common/component.py) against a real CS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common import component, enroll, errors
from common.config import ComponentConfig
from cs import accounts, enrollment


async def issue(env: Any, host_id: str) -> enroll.EnrollToken:
    async with env.service.state.db.write() as session:
        return await enrollment.issue(session, accounts.load_key(env.data_dir), host_id=host_id, ttl_s=60.0,
                                      job_id=None)


def token_file(path: Path, token: enroll.EnrollToken) -> Path:
    path.write_text(token.text + "\n")
    path.chmod(0o600)
    return path


async def noop(_doc: dict[str, Any]) -> None:
    return None


async def test_ensure_identity_enrolls_from_the_token_file_and_deletes_it(cs_env: Any, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = token_file(tmp_path / "enroll.token", await issue(cs_env, "vm-a"))
    cfg = ComponentConfig(data_dir=tmp_path / "agent", cs_url=cs_env.url, host_id="vm-a", enroll_token_file=path,
                          heartbeat_interval_s=0.0)
    files = await component.ensure_identity(cfg, "agent", {})
    assert files.exists() and files.read_meta()["host_id"] == "vm-a"
    assert not path.exists()  # spent
    comps = await cs_env.admin.components()
    assert [(c["role"], c["host_id"]) for c in comps] == [("agent", "vm-a")]
    assert await component.ensure_identity(cfg, "agent", {}) == files  # registered: the file is not needed

    control = component.ControlPlane(cfg, files, on_settings=noop, metrics=dict)
    try:
        capsys.readouterr()
        assert await control.reregister() is False  # no credential any more: logged, keeps running
        assert "reregister_needs_credential" in capsys.readouterr().out
        before = files.cert.read_bytes()
        token_file(path, await issue(cs_env, "vm-a"))  # an operator hands it a new token
        assert await control.reregister() is True
        assert files.cert.read_bytes() != before and not path.exists()
        assert files.read_meta()["component_id"] == comps[0]["component_id"]
    finally:
        await control.stop()


async def test_a_refused_token_leaves_no_identity_and_keeps_the_file(cs_env: Any, tmp_path: Path) -> None:
    path = token_file(tmp_path / "enroll.token", await issue(cs_env, "vm-a"))
    cfg = ComponentConfig(data_dir=tmp_path / "agent", cs_url=cs_env.url, host_id="vm-b", enroll_token_file=path)
    with pytest.raises(errors.Unauthorized):
        await component.ensure_identity(cfg, "agent", {})
    assert path.exists() and not (tmp_path / "agent" / "identity" / "cert.pem").exists()
    assert await cs_env.admin.components() == []


async def test_the_passphrase_file_wins_over_a_token_file(cs_env: Any, tmp_path: Path) -> None:
    path = token_file(tmp_path / "enroll.token", await issue(cs_env, "vm-a"))
    cfg = ComponentConfig(data_dir=tmp_path / "agent", cs_url=cs_env.url, host_id="vm-a", enroll_token_file=path,
                          passphrase_file=cs_env.passphrase_file)
    await component.ensure_identity(cfg, "agent", {})
    assert path.exists()  # not used, so not deleted


async def test_no_credential_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="neither passphrase_file nor enroll_token_file"):
        await component.ensure_identity(ComponentConfig(data_dir=tmp_path), "agent", {})


async def test_a_malformed_token_file_is_refused_before_any_request(tmp_path: Path) -> None:
    path = tmp_path / "enroll.token"
    path.write_text("drlab-enroll-v1.nothex.x")
    cfg = ComponentConfig(data_dir=tmp_path, cs_url="https://127.0.0.1:9", enroll_token_file=path)
    with pytest.raises(errors.BadRequest, match="enrollment token"):
        await component.ensure_identity(cfg, "agent", {})
    assert path.exists()
