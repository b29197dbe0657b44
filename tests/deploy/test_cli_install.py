"""``drlab ps|mt|agent install`` and ``drlab ps reregister`` against a real CS on loopback: what is
left in the data directory and in the CS's component list after a success and after each failure."""

from __future__ import annotations

import asyncio
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from common import auth, component, tls
from common.config import AgentConfig, MTConfig, PSConfig, load
from common.http import ApiClient
from cs import accounts
from cs.registration import rotate_passphrase
from deploy import cli
from mt.service import MTService
from ps.service import PSService
from tests.cs.fleet import call, component_settings, make_batch, wait_until

FAST = ["heartbeat_interval_s=0.3", "settings_wait_s=1.0", "retry_max_backoff_s=0.3", "request_timeout_s=5.0"]


async def drlab(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


async def component_ids(env: Any) -> set[str]:
    return {c["component_id"] for c in await env.admin.components()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def install_argv(env: Any, data: Path, phrase: Path, role: str = "ps", *extra: str) -> list[str]:
    return [role, "install", "--cs", env.url, "--passphrase-file", str(phrase), "--dir", str(data),
            "--host-id", f"{role}-x", "--timeout-s", "5", *extra]


@pytest.mark.timeout(60)
async def test_ps_install_registers_then_writes_a_private_config(cs_env: Any, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "ps"
    argv = install_argv(cs_env, data, cs_env.passphrase_file, "ps", "--data-port", "9443",
                        "--proxy", "http://127.0.0.1:3128")
    assert await drlab(*argv) == 0
    meta = tls.IdentityFiles(data / "identity").read_meta()
    assert meta["component_id"] in await component_ids(cs_env)
    path = data / "ps.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = load(PSConfig, path)
    assert (cfg.cs_url, cfg.data_port, cfg.host_id, cfg.data_dir) == (cs_env.url, 9443, "ps-x", data.resolve())
    assert cfg.upload_proxy == "http://127.0.0.1:3128" and cfg.passphrase_file == cs_env.passphrase_file.resolve()
    out = capsys.readouterr().out
    assert meta["component_id"] in out and f"drlab ps start --dir {data.resolve()}" in out
    before = await component_ids(cs_env)  # installing over a registered PS is refused, nothing changes
    assert await drlab(*argv) == 1
    assert "reregister" in capsys.readouterr().err
    assert await component_ids(cs_env) == before and tls.IdentityFiles(data / "identity").read_meta() == meta


@pytest.mark.timeout(60)
async def test_mt_and_agent_install_write_their_configs(cs_env: Any, tmp_path: Path) -> None:
    mt_dir, agent_dir = tmp_path / "mt", tmp_path / "agent"
    assert await drlab(*install_argv(cs_env, mt_dir, cs_env.passphrase_file, "mt", "--data-port", "9443",
                                     "--control-port", "9080", "--datastore", str(tmp_path))) == 0
    mt = load(MTConfig, mt_dir / "mt.toml")
    assert (mt.data_port, mt.control_port, mt.datastore_dir) == (9443, 9080, _resolved(tmp_path))
    assert tls.IdentityFiles(mt_dir / "identity").read_meta()["ports"] == {"data": 9443, "control": 9080}
    assert await drlab(*install_argv(cs_env, agent_dir, cs_env.passphrase_file, "agent",
                                     "--disk", f"disk0={tmp_path / 'd0.img'}:1M")) == 0
    agent = load(AgentConfig, agent_dir / "agent.toml")
    assert [(d.name, d.size_bytes) for d in agent.disks] == [("disk0", 1 << 20)]
    roles = {c["role"] for c in await cs_env.admin.components()}
    assert {"mt", "agent"} <= roles
    before = await component_ids(cs_env)
    bad = tmp_path / "bad-agent"
    assert await drlab(*install_argv(cs_env, bad, cs_env.passphrase_file, "agent", "--disk", "disk0=x:lots")) == 1
    assert not bad.exists() and await component_ids(cs_env) == before


@pytest.mark.timeout(60)
async def test_a_wrong_passphrase_fails_and_leaves_nothing(cs_env: Any, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not-the-passphrase\n")
    before = await component_ids(cs_env)
    data = tmp_path / "ps"
    assert await drlab(*install_argv(cs_env, data, wrong, "ps", "--data-port", "9443")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and "passphrase" in err, err
    assert not data.exists()
    existing = tmp_path / "existing"  # a data directory that was there before stays, empty
    existing.mkdir()
    assert await drlab(*install_argv(cs_env, existing, wrong, "ps")) == 1
    assert list(existing.iterdir()) == []
    assert await drlab(*install_argv(cs_env, data, tmp_path / "missing.txt", "ps")) == 1
    assert "cannot read" in capsys.readouterr().err and not data.exists()
    assert await component_ids(cs_env) == before


@pytest.mark.timeout(60)
async def test_an_unreachable_cs_fails_and_leaves_nothing(cs_env: Any, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    before = await component_ids(cs_env)
    data = tmp_path / "ps"
    argv = install_argv(cs_env, data, cs_env.passphrase_file, "ps")
    argv[argv.index(cs_env.url)] = f"127.0.0.1:{free_port()}"
    assert await drlab(*argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot register" in err, err
    assert not data.exists()
    argv[argv.index("--cs") + 1] = "127.0.0.1:99999"
    assert await drlab(*argv) == 1 and "port" in capsys.readouterr().err.lower()
    assert await component_ids(cs_env) == before


def _resolved(path: Path) -> Path:
    return path.resolve()


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _files_of(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted((data / "cache").rglob("*")) if p.is_file()}


@pytest.mark.timeout(90)
async def test_reregister_after_a_rotation_keeps_the_id_and_the_cache(cs_env: Any, tmp_path: Path) -> None:
    env = cs_env
    ps_dir = tmp_path / "ps"
    assert await drlab(*install_argv(env, ps_dir, env.passphrase_file, "ps", "--data-port", str(free_port()))) == 0
    ps_cfg = ps_dir / "ps.toml"
    mt_cfg = MTConfig(data_dir=tmp_path / "mt", host_id="mt1", data_port=free_port(), control_port=free_port(),
                      **component_settings(env, tmp_path))
    mt, ps = MTService(mt_cfg), PSService(load(PSConfig, ps_cfg, FAST), poll_interval_s=0.1)
    await mt.start()
    await ps.start()
    agent = tls.IdentityFiles(tmp_path / "agent-id")
    meta = await component.register(env.url, env.passphrase, role="agent", host_id="m1", address="127.0.0.1",
                                    ports={}, files=agent)
    api = ApiClient(env.url, tls.client_context(agent), timeout_s=10.0)
    try:
        reply = await api.put("/v1/machines/self/disks", {"disks": [{"name": "disk0", "size_bytes": 1 << 20}]})
    finally:
        await api.close()
    disk_id = str(reply["disks"][0]["disk_id"])
    await env.admin.protect(str(meta["component_id"]))
    await wait_until(lambda: disk_id in ps.registry.disks, what="disk in the PS's settings")
    await mt.stop()  # the PS keeps what it accepts: its uploads fail
    ps_url = f"https://127.0.0.1:{ps.data_port}"
    for seq in (1, 2, 3):
        status, _ = await call(ps_url, tls.client_context(agent), "PUT", f"/v1/disks/{disk_id}/batches/1/{seq}",
                               data=make_batch(disk_id, 1, seq))
        assert status in (200, 201)
    assert ps.cache is not None and ps.cache.total_batches == 3
    await ps.stop()
    ps_id = tls.IdentityFiles(ps_dir / "identity").read_meta()["component_id"]
    cached = _files_of(ps_dir)
    assert cached
    assert env.service.state is not None
    state = env.service.state
    passphrase, _ = await rotate_passphrase(state.db, accounts.load_key(state.cfg.data_dir))
    new_file = tmp_path / "new-passphrase.txt"
    new_file.write_text(passphrase.value + "\n")
    wrong = tmp_path / "old.txt"
    wrong.write_text(env.passphrase.value + "\n")
    assert await drlab("ps", "reregister", "--dir", str(ps_dir), "--passphrase-file", str(wrong)) == 1
    assert await drlab("ps", "reregister", "--dir", str(ps_dir), "--passphrase-file", str(new_file)) == 0
    assert tls.IdentityFiles(ps_dir / "identity").read_meta()["component_id"] == ps_id
    assert _files_of(ps_dir) == cached
    assert load(PSConfig, ps_cfg).passphrase_file == new_file.resolve()
    _write(str(mt_cfg.passphrase_file), passphrase.value + "\n")  # the MT re-registers by itself
    mt, ps = MTService(mt_cfg), PSService(load(PSConfig, ps_cfg, FAST), poll_interval_s=0.1)
    await mt.start()
    await ps.start()
    try:
        assert ps.component_id == ps_id
        await wait_until(lambda: ps.cache is not None and ps.cache.total_batches == 0, timeout_s=30,
                         what="the cached batches uploaded")
        comps = {c["component_id"]: c for c in await env.admin.components()}
        assert comps[ps_id]["last_heartbeat"]
    finally:
        await ps.stop()
        await mt.stop()
    assert isinstance(passphrase, auth.Passphrase)


@pytest.mark.timeout(60)
async def test_set_keys_land_typed_in_the_config_and_bad_ones_register_nothing(
        cs_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = await component_ids(cs_env)
    for bad in ("heartbeat_interval_s=soon", "no_such_key=1", "novalue"):
        data = tmp_path / "bad"
        argv = install_argv(cs_env, data, cs_env.passphrase_file, "ps", "--set", bad)
        assert await drlab(*argv) == 1, bad
        assert "drlab: error:" in capsys.readouterr().err and not data.exists()
    assert await component_ids(cs_env) == before
    data = tmp_path / "ps"
    argv = install_argv(cs_env, data, cs_env.passphrase_file, "ps", "--set", "heartbeat_interval_s=2.5",
                        "--set", "cache_max_bytes=1048576")
    assert await drlab(*argv) == 0
    cfg = load(PSConfig, data / "ps.toml")
    assert (cfg.heartbeat_interval_s, cfg.cache_max_bytes) == (2.5, 1048576)
    assert "heartbeat_interval_s = 2.5" in (data / "ps.toml").read_text()  # a number, not a string
