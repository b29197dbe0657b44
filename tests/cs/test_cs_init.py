"""``init_cs``, ``CSService`` start-up and ``python -m cs`` as a real process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from common import auth, component, errors, tls
from common.config import CSConfig
from cs import accounts
from cs.init import init_cs
from cs.service import CSService

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_init_creates_everything_once(tmp_path: Path) -> None:
    cfg = CSConfig(data_dir=tmp_path / "cs", port=0)
    phrase = await init_cs(cfg, hosts=["127.0.0.1"])
    d = cfg.data_dir
    assert (d / "passphrase.txt").read_text().strip() == phrase.value and mode(d / "passphrase.txt") == 0o600
    assert mode(d / "ca" / "key.pem") == 0o600 and (d / "ca" / "cert.pem").exists()
    for sub, role in (("identity", "cs"), ("admin", "admin")):
        files = tls.IdentityFiles(d / sub)
        assert files.exists() and mode(files.key) == 0o600 and files.read_meta()["role"] == role
    with sqlite3.connect(d / "cs.db") as db:
        rows = dict(db.execute("SELECT key, value FROM meta").fetchall())
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables >= {"meta", "components", "challenges", "disks", "jobs"}
    kdf = json.loads(rows["auth_kdf"])
    key = auth.derive_key(phrase, base64.b64decode(rows["auth_salt_b64"]), **kdf)
    sealed = rows["auth_key_b64"]  # sealed with the account store's key: not in clear at rest
    assert sealed.startswith("sealed:") and base64.b64encode(key).decode() not in json.dumps(rows)
    assert base64.b64decode(accounts.load_key(d).open("auth_key_b64", sealed.removeprefix("sealed:"))) == key
    assert phrase.value not in json.dumps(rows)
    with pytest.raises(errors.ConfigError):
        await init_cs(cfg, hosts=["127.0.0.1"])
    assert (d / "passphrase.txt").read_text().strip() == phrase.value  # untouched


async def test_service_refuses_an_uninitialised_dir(tmp_path: Path) -> None:
    svc = CSService(CSConfig(data_dir=tmp_path / "empty", port=0))
    with pytest.raises(errors.ConfigError):
        await svc.start()
    await svc.stop()


async def test_port_in_use_is_a_config_error(cs_env: Any) -> None:
    other = CSService(CSConfig(data_dir=cs_env.data_dir, listen_host="127.0.0.1", port=cs_env.service.port,
                               db_url=cs_env.cfg.db_url))
    with pytest.raises(errors.ConfigError):
        await other.start()


FALLBACK_SNIPPET = """
import os, sys
sys.path.insert(0, sys.argv[1])
from common.config import CSConfig
from cs.service import bind_with_fallback
if os.geteuid() == 0:  # drop privileges (after the imports: the interpreter may be unreadable to nobody)
    os.setgid(65534); os.setuid(65534)
sock = bind_with_fallback(CSConfig(listen_host="127.0.0.1", port=443, fallback_port=0))
print(sock.getsockname()[1])
"""


def test_port_443_without_privileges_falls_back() -> None:
    proc = subprocess.run([sys.executable, "-c", FALLBACK_SNIPPET, str(ROOT)], capture_output=True, text=True,
                          timeout=30, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip().splitlines()[-1]) not in (0, 443)
    assert "port_fallback" in proc.stdout + proc.stderr


def _logged_url(log_file: Path) -> str | None:
    if not log_file.exists():
        return None
    for line in log_file.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "cs_started":
            return str(event["url"])
    return None


async def _wait_for_url(log_file: Path, proc: asyncio.subprocess.Process, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.returncode is None, "the CS process exited"
        url = await asyncio.to_thread(_logged_url, log_file)
        if url:
            return url
        await asyncio.sleep(0.1)
    raise AssertionError("the CS never logged cs_started")


async def test_main_serves_until_sigterm(tmp_path: Path) -> None:
    cfg = CSConfig(data_dir=tmp_path / "cs", port=0)
    phrase = await init_cs(cfg, hosts=["127.0.0.1"])
    log_file = tmp_path / "cs.log"
    conf = tmp_path / "cs.toml"
    conf.write_text(f'data_dir = "{cfg.data_dir}"\nlisten_host = "127.0.0.1"\nport = 443\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cs", "--config", str(conf), "--set", "port=0", "--set", f"log_file={log_file}",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        url = await _wait_for_url(log_file, proc)
        meta = await component.register(url, phrase, role="agent", host_id="m-main", address="127.0.0.1", ports={},
                                        files=tls.IdentityFiles(tmp_path / "agent"))
        assert len(meta["component_id"]) == 32
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, stderr.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log_file.read_text()
    assert '"cs_stopped"' in text and '"registered"' in text
    assert phrase.value not in text and phrase.value not in stderr.decode()


def test_main_reports_config_errors(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cs", "--set", "no_such_key=1"], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "no_such_key" in proc.stderr
