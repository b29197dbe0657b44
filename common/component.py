"""What every registered component does with the CS: register once by passphrase proof,
then heartbeat and long-poll its settings document, both as named, owned tasks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from common import __version__, auth, errors, tls
from common import logging as dlog
from common.config import ComponentConfig
from common.http import ApiClient, backoff_s

log = dlog.get("drlab.component")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


async def register(cs_url: str, passphrase: auth.Passphrase, *, role: str, host_id: str, address: str,
                   ports: dict[str, int], files: tls.IdentityFiles, timeout_s: float = 30.0,
                   version: str = __version__) -> dict[str, Any]:
    """Challenge-response registration; writes the identity files only when the CS proved itself."""
    client = ApiClient(cs_url, tls.bootstrap_context(), timeout_s=timeout_s)
    try:
        ch = await client.post("/v1/register/challenge", {"role": role, "host_id": host_id})
        salt, server_nonce = _unb64(ch["salt"]), _unb64(ch["server_nonce"])
        kdf = ch.get("kdf", {})
        key = await asyncio.to_thread(auth.derive_key, passphrase, salt,
                                      int(kdf.get("n", auth.KDF_N)), int(kdf.get("r", auth.KDF_R)),
                                      int(kdf.get("p", auth.KDF_P)))
        private = tls.new_key()
        csr = tls.make_csr(private, role, host_id)
        client_nonce = auth.nonce()
        proof = auth.client_proof(key, server_nonce=server_nonce, client_nonce=client_nonce, role=role,
                                  host_id=host_id, csr_pem=csr)
        body = {"challenge_id": ch["challenge_id"], "role": role, "host_id": host_id, "address": address,
                "ports": ports, "version": version, "csr_pem": csr.decode(),
                "client_nonce": _b64(client_nonce), "proof": _b64(proof)}
        reply = await client.post("/v1/register", body)
    finally:
        await client.close()
    ca_pem, cert_pem = reply["ca_pem"].encode(), reply["cert_pem"].encode()
    expected = auth.server_proof(key, server_nonce=server_nonce, client_nonce=client_nonce, role=role,
                                 host_id=host_id, ca_der=tls.der_of_pem(ca_pem), cert_der=tls.der_of_pem(cert_pem))
    if not auth.equal(expected, _unb64(reply["server_proof"])):
        raise errors.Unauthorized("the configuration server did not prove knowledge of the passphrase")
    meta = {"component_id": reply["component_id"], "role": role, "cs_url": cs_url, "host_id": host_id}
    files.write(tls.key_pem(private), cert_pem, ca_pem, meta)
    log.info("registered", role=role, component_id=reply["component_id"], cs_url=cs_url)
    return meta


async def ensure_identity(cfg: ComponentConfig, role: str, ports: dict[str, int]) -> tls.IdentityFiles:
    files = tls.IdentityFiles(cfg.data_dir / "identity")
    if files.exists():
        return files
    if cfg.passphrase_file is None:
        raise errors.ConfigError("not registered yet and no passphrase_file configured")
    passphrase = auth.read_passphrase_file(str(cfg.passphrase_file))
    await register(cfg.cs_url, passphrase, role=role, host_id=cfg.host_id or role, address=cfg.address,
                   ports=ports, files=files, timeout_s=cfg.request_timeout_s)
    return files


SettingsCallback = Callable[[dict[str, Any]], Awaitable[None]]
MetricsFn = Callable[[], dict[str, Any]]


class ControlPlane:
    """Heartbeats and the settings long-poll of one component. Replication never waits on it:
    while the CS is down both loops back off and retry."""

    def __init__(self, cfg: ComponentConfig, files: tls.IdentityFiles, *, on_settings: SettingsCallback,
                 metrics: MetricsFn) -> None:
        self.cfg = cfg
        self.files = files
        self.component_id: str = files.read_meta()["component_id"]
        self.cs = ApiClient(cfg.cs_url, tls.client_context(files), timeout_s=cfg.request_timeout_s)
        self._on_settings = on_settings
        self._metrics = metrics
        self.settings_version = -1
        self.settings: dict[str, Any] = {}
        self.first_settings = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                       asyncio.create_task(self._settings_loop(), name="settings-poll")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.cs.close()

    async def heartbeat_once(self) -> None:
        await self.cs.post("/v1/heartbeat", {"metrics": self._metrics(), "time_ns": time.time_ns()})

    async def _heartbeat_loop(self) -> None:
        attempt = 0
        while True:
            try:
                await self.heartbeat_once()
                attempt = 0
                await asyncio.sleep(self.cfg.heartbeat_interval_s)
            except errors.DrlabError as exc:
                attempt += 1
                log.warning("heartbeat_failed", error=exc.message, attempt=attempt)
                await asyncio.sleep(min(self.cfg.heartbeat_interval_s, backoff_s(attempt, max_s=5.0)))

    async def poll_once(self, wait_s: float) -> bool:
        reply = await self.cs.get("/v1/settings", params={"version": self.settings_version, "wait_s": wait_s},
                                  timeout_s=wait_s + self.cfg.request_timeout_s)
        if int(reply["version"]) == self.settings_version:
            return False
        self.settings_version = int(reply["version"])
        self.settings = reply["document"]
        await self._on_settings(self.settings)
        self.first_settings.set()
        return True

    async def _settings_loop(self) -> None:
        attempt = 0
        while True:
            try:
                await self.poll_once(self.cfg.settings_wait_s if self.first_settings.is_set() else 0)
                attempt = 0
            except errors.DrlabError as exc:
                attempt += 1
                log.warning("settings_poll_failed", error=exc.message, attempt=attempt)
                await asyncio.sleep(backoff_s(attempt, max_s=self.cfg.retry_max_backoff_s))
