"""``drlab operator login|logout`` (deploy/cli_session.py) against a real CS on loopback: the token goes
to a 0600 file and never to stdout, works as a bearer token, stops working after logout; a wrong
password exits 2 and writes nothing."""

from __future__ import annotations

import io
import stat
from pathlib import Path
from typing import Any

import pytest

from common import errors, tls
from common.http import ApiClient
from tests.deploy.admincli import drlab, json_out


async def whoami(env: Any, token: str) -> Any:
    api = ApiClient(env.url, tls.client_context(None, ca_pem=env.admin_files.ca.read_bytes()), timeout_s=15.0)
    try:
        return await api.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    finally:
        await api.close()


@pytest.mark.timeout(60)
async def test_login_writes_a_private_token_and_logout_ends_it(cs_env: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    password = "a-long-enough-password-1"
    await cs_env.admin.api.post("/v1/operators", {"name": "alice", "role": "reader", "password": password})
    token_file = tmp_path / "alice.token"
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    assert await drlab(cs_env, "--json", "operator", "login", "alice", "--token-file", str(token_file)) == 0
    reply = json_out(capsys.readouterr().out)
    token = token_file.read_text().strip()
    assert reply["name"] == "alice" and reply["role"] == "reader" and "token" not in reply
    assert token and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert (await whoami(cs_env, token))["name"] == "alice"
    assert await drlab(cs_env, "operator", "logout", "--token-file", str(token_file)) == 0
    assert "logged out" in capsys.readouterr().out and not token_file.exists()
    with pytest.raises(errors.Unauthorized):
        await whoami(cs_env, token)
    assert await drlab(cs_env, "operator", "logout", "--token-file", str(token_file)) == 2  # gone: clear error
    assert "cannot read the token file" in capsys.readouterr().err


@pytest.mark.timeout(60)
async def test_a_wrong_password_exits_2_and_writes_nothing(cs_env: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    await cs_env.admin.api.post("/v1/operators", {"name": "bob", "role": "admin", "password": "right-password-123"})
    token_file = tmp_path / "bob.token"
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong-password-123\n"))
    assert await drlab(cs_env, "operator", "login", "bob", "--token-file", str(token_file)) == 2
    assert capsys.readouterr().err.startswith("drlab: error:") and not token_file.exists()
