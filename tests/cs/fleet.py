"""A small in-process fleet for the certificate, passphrase and backup tests: a CS (given), a real
MT and PS (services with their control planes), and an agent identity whose disk is protected."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from common import component, tls
from common.config import MTConfig, PSConfig
from common.http import ApiClient
from common.wire import batch as wbatch
from mt.service import MTService
from ps.service import PSService

DISK_BYTES = 1 << 20


def make_batch(disk_id: str, gen: int, seq: int, data: bytes = b"x" * 4096) -> bytes:
    return wbatch.encode(wbatch.ChangeBatch(
        disk_id=bytes.fromhex(disk_id), generation=gen, seq=seq, wnum_first=seq, wnum_hi=seq,
        t_first_ns=1_000 * seq, t_last_ns=1_000 * seq + 1, mode=wbatch.Mode.DATA,
        accuracy=wbatch.Accuracy.EXACT, records=[wbatch.Record(0, data)]))


async def wait_until(pred: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s"
        await asyncio.sleep(0.05)


async def call(url: str, ctx: ssl.SSLContext, method: str, path: str, *, data: bytes | None = None,
               body: Any = None) -> tuple[int, Any]:
    """One request on a fresh connection: (status, parsed JSON body)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, force_close=True)) as session:
        async with session.request(method, url + path, data=data, json=body) as resp:
            return resp.status, await resp.json(content_type=None)


def serial_of(files: tls.IdentityFiles) -> int:
    return int(tls.serial_hex(files.cert.read_bytes()), 16)


async def peer_serial(host: str, port: int, ca_pem: bytes) -> int:
    """The serial of the certificate a TLS server presents now (a fresh handshake)."""
    ctx = tls.client_context(None, ca_pem=ca_pem)
    _, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    from cryptography import x509

    return int(x509.load_der_x509_certificate(der).serial_number)


@dataclass
class Fleet:
    env: Any  # tests/conftest.py CSEnv
    tmp: Path
    ps: PSService
    mt: MTService
    agent: tls.IdentityFiles
    machine_id: str
    disk_id: str

    @property
    def ps_url(self) -> str:
        return f"https://127.0.0.1:{self.ps.data_port}"

    @property
    def mt_url(self) -> str:
        return f"https://127.0.0.1:{self.mt.data_port}"

    @property
    def mt_control_url(self) -> str:
        return f"https://127.0.0.1:{self.mt.control_port}"

    @property
    def ps_files(self) -> tls.IdentityFiles:
        return tls.IdentityFiles(self.ps.cfg.data_dir / "identity")

    @property
    def mt_files(self) -> tls.IdentityFiles:
        return tls.IdentityFiles(self.mt.cfg.data_dir / "identity")

    async def put_batch(self, files: tls.IdentityFiles, seq: int, gen: int = 1) -> tuple[int, Any]:
        return await call(self.ps_url, tls.client_context(files), "PUT",
                          f"/v1/disks/{self.disk_id}/batches/{gen}/{seq}", data=make_batch(self.disk_id, gen, seq))

    async def stop(self) -> None:
        await self.ps.stop()
        await self.mt.stop()


def component_settings(env: Any, tmp: Path, **overrides: Any) -> dict[str, Any]:
    """Config shared by the fleet's PS and MT; each gets its own copy of the passphrase file."""
    phrase = tmp / "component-passphrase.txt"
    if not phrase.exists():
        shutil.copy(env.passphrase_file, phrase)
        phrase.chmod(0o600)
    values = {"cs_url": env.url, "passphrase_file": phrase, "address": "127.0.0.1", "heartbeat_interval_s": 0.3,
              "settings_wait_s": 1.0, "retry_max_backoff_s": 0.3, "request_timeout_s": 5.0}
    values.update(overrides)
    return values


async def start_fleet(env: Any, tmp: Path, **overrides: Any) -> Fleet:
    """MT + PS started against ``env``; an agent registered with a 1 MiB disk, protected."""
    common = component_settings(env, tmp, **overrides)
    mt = MTService(MTConfig(data_dir=tmp / "mt", host_id="mt1", data_port=0, control_port=0, **common))
    ps = PSService(PSConfig(data_dir=tmp / "ps", host_id="ps1", data_port=0, **common), poll_interval_s=0.1)
    await mt.start()
    await ps.start()
    agent = tls.IdentityFiles(tmp / "agent-id")
    meta = await component.register(env.url, env.passphrase, role="agent", host_id="m1", address="127.0.0.1",
                                    ports={}, files=agent)
    client = ApiClient(env.url, tls.client_context(agent), timeout_s=10.0)
    try:
        reply = await client.put("/v1/machines/self/disks", {"disks": [{"name": "disk0", "size_bytes": DISK_BYTES}]})
    finally:
        await client.close()
    disk_id = str(reply["disks"][0]["disk_id"])
    await env.admin.protect(str(meta["component_id"]))
    fleet = Fleet(env, tmp, ps, mt, agent, str(meta["component_id"]), disk_id)
    await wait_until(lambda: disk_id in ps.registry.disks and disk_id in mt.registry.disks, what="disk in settings")
    return fleet
