"""What every registered component does with the CS: register once by passphrase proof,
then heartbeat and long-poll its settings document, both as named, owned tasks.

Certificates: the control plane also renews the component's certificate (a new key and CSR,
sent under the current certificate) once less than ``cert_renew_fraction`` of its validity
remains, and loads it into every live TLS context of the process (common/tls.py), so servers
and clients switch without a restart. When the CS answers 401 ``reregister_required`` (its
passphrase was rotated) the component registers again from its passphrase file (or a new
enrollment token file), keeping its component id and data; replication, which needs only the
certificate, is not interrupted. An agent may register with a single-use enrollment token
(common/enroll.py) instead of the passphrase; the token file is deleted once it is spent.
A revoked certificate (401 ``certificate_revoked``) is never replaced automatically: an
operator registers the component again on purpose (remove ``identity/`` and restart).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from common import __version__, auth, enroll, errors, tls
from common import logging as dlog
from common.config import ComponentConfig
from common.http import ApiClient, backoff_s

log = dlog.get("drlab.component")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


Credential = auth.Passphrase | enroll.EnrollToken


async def _proof_key(credential: Credential, ch: dict[str, Any]) -> bytes:
    """The HMAC key of the proofs: the token's key, or the passphrase's scrypt key (in a thread)."""
    if isinstance(credential, enroll.EnrollToken):
        return credential.key
    kdf = ch.get("kdf", {})
    return await asyncio.to_thread(auth.derive_key, credential, _unb64(ch["salt"]),
                                   int(kdf.get("n", auth.KDF_N)), int(kdf.get("r", auth.KDF_R)),
                                   int(kdf.get("p", auth.KDF_P)))


async def register(cs_url: str, credential: Credential, *, role: str, host_id: str, address: str,
                   ports: dict[str, int], files: tls.IdentityFiles, timeout_s: float = 30.0,
                   version: str = __version__) -> dict[str, Any]:
    """Challenge-response registration with a passphrase or an enrollment token; writes the
    identity files only when the CS proved itself (knowledge of the same key)."""
    client = ApiClient(cs_url, tls.bootstrap_context(), timeout_s=timeout_s)
    ask: dict[str, Any] = {"role": role, "host_id": host_id}
    if isinstance(credential, enroll.EnrollToken):
        ask["enroll_token_id"] = credential.token_id
    try:
        ch = await client.post("/v1/register/challenge", ask)
        server_nonce = _unb64(ch["server_nonce"])
        key = await _proof_key(credential, ch)
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
        raise errors.Unauthorized("the configuration server did not prove knowledge of the passphrase or token")
    meta = {"component_id": reply["component_id"], "role": role, "cs_url": cs_url, "host_id": host_id,
            "address": address, "ports": ports}
    files.write(tls.key_pem(private), cert_pem, ca_pem, meta)
    tls.reload_contexts(files)  # a re-registration: live contexts switch to the new certificate
    log.info("registered", role=role, component_id=reply["component_id"], cs_url=cs_url)
    return meta


async def ensure_identity(cfg: ComponentConfig, role: str, ports: dict[str, int]) -> tls.IdentityFiles:
    files = tls.IdentityFiles(cfg.data_dir / "identity")
    files.complete_pending()
    if files.exists():
        meta = files.read_meta()
        if "ports" not in meta:  # registered by an older version: what re-registering will send
            tls.durable_write(files.meta, json.dumps({**meta, "address": cfg.address, "ports": ports},
                                                     indent=2).encode())
        return files
    credential = read_credential(cfg)
    if credential is None:
        raise errors.ConfigError("not registered yet and neither passphrase_file nor enroll_token_file configured")
    await register(cfg.cs_url, credential, role=role, host_id=cfg.host_id or role, address=cfg.address,
                   ports=ports, files=files, timeout_s=cfg.request_timeout_s)
    spent_token(cfg, credential)
    return files


def read_credential(cfg: ComponentConfig) -> Credential | None:
    """The passphrase file's passphrase if configured, else the enrollment token file's token, else None.
    OSError when the file cannot be read; BadRequest for a malformed token."""
    if cfg.passphrase_file is not None:
        return auth.read_passphrase_file(str(cfg.passphrase_file))
    if cfg.enroll_token_file is not None:
        return enroll.read_token_file(str(cfg.enroll_token_file))
    return None


def spent_token(cfg: ComponentConfig, credential: Credential) -> None:
    """After a successful registration by token: delete its file (a used token is worthless)."""
    if isinstance(credential, enroll.EnrollToken) and cfg.enroll_token_file is not None:
        with contextlib.suppress(FileNotFoundError):
            cfg.enroll_token_file.unlink()
        log.info("enroll_token_spent", token_id=credential.token_id, path=str(cfg.enroll_token_file))


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
        self.cs = ApiClient(cfg.cs_url, tls.client_context(files), timeout_s=cfg.request_timeout_s,
                            stall_timeout_s=cfg.stall_timeout_s)
        self._on_settings = on_settings
        self._metrics = metrics
        self.settings_version = -1
        self.settings: dict[str, Any] = {}
        self.first_settings = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._identity_lock = asyncio.Lock()
        self.renewals = 0
        self.reregistrations = 0
        self._next_reregister = 0.0  # monotonic time before which no new re-registration is tried
        self.last_rtt_ns: int | None = None  # round trip of the last heartbeat answered

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                       asyncio.create_task(self._settings_loop(), name="settings-poll"),
                       asyncio.create_task(self._renew_loop(), name="cert-renewal")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.cs.close()

    async def heartbeat_once(self) -> None:
        """Metrics, the wall clock when sent and the round trip of the previous heartbeat (the CS
        estimates this clock's skew from them: cs/health/clock.py)."""
        body: dict[str, Any] = {"metrics": self._metrics(), "time_ns": time.time_ns(), "version": __version__}
        if self.last_rtt_ns is not None:
            body["rtt_ns"] = self.last_rtt_ns
        started = time.monotonic_ns()
        await self.cs.post("/v1/heartbeat", body)
        self.last_rtt_ns = time.monotonic_ns() - started

    async def _heartbeat_loop(self) -> None:
        attempt = 0
        while True:
            serial = self._serial()
            try:
                await self.heartbeat_once()
                attempt = 0
                await asyncio.sleep(self.cfg.heartbeat_interval_s)
            except errors.DrlabError as exc:
                attempt += 1
                log.warning("heartbeat_failed", error=exc.message, code=exc.code, attempt=attempt)
                if not await self._identity_refused(exc, serial):
                    await asyncio.sleep(min(self.cfg.heartbeat_interval_s, backoff_s(attempt, max_s=5.0)))

    # ------------------------------------------------------------------ certificates

    def _serial(self) -> str:
        try:
            return tls.serial_hex(self.files.cert.read_bytes())
        except (OSError, ValueError):
            return ""

    def _expired(self) -> bool:
        try:
            return tls.validity(self.files.cert.read_bytes())[1] <= time.time()
        except (OSError, ValueError):
            return False

    async def _identity_refused(self, exc: errors.DrlabError, serial: str) -> bool:
        """React to a refused certificate; True when a new identity is in place (retry at once)."""
        if exc.code == "reregister_required":
            return await self.reregister(serial)
        if exc.code == "certificate_revoked":
            log.error("certificate_revoked", component_id=self.component_id,
                      action="register again with the passphrase: remove identity/ and restart")
        return False

    async def renew_once(self) -> None:
        """A new key and certificate from the CS (same component id), loaded into every live context."""
        meta = self.files.read_meta()
        key = tls.new_key()
        csr = tls.make_csr(key, str(meta["role"]), str(meta.get("host_id") or self.component_id))
        reply = await self.cs.post("/v1/certificate/renew", {"csr_pem": csr.decode(), "version": __version__})
        cert_pem, ca_pem = str(reply["cert_pem"]).encode(), str(reply["ca_pem"]).encode()
        try:
            tls.check_issued(cert_pem, self.files.ca.read_bytes(), key)
        except ValueError as exc:
            raise errors.Unauthorized(f"renewed certificate refused: {exc}") from exc
        if reply.get("component_id") != self.component_id or ca_pem != self.files.ca.read_bytes():
            raise errors.Unauthorized("renewed certificate is for another component or CA")
        async with self._identity_lock:
            await asyncio.to_thread(self.files.replace_pair, tls.key_pem(key), cert_pem)
            tls.reload_contexts(self.files)  # on the loop's thread: contexts are not shared across threads
        self.renewals += 1
        log.info("certificate_renewed", component_id=self.component_id, serial=tls.serial_hex(cert_pem))

    async def _renew_loop(self) -> None:
        attempt = 0
        while True:
            try:
                wait_s = tls.seconds_until_renewal(self.files.cert.read_bytes(), self.cfg.cert_renew_fraction)
            except (OSError, ValueError) as exc:
                log.error("certificate_unreadable", error=str(exc))
                wait_s = self.cfg.cert_check_interval_s
            if wait_s > 0:
                await asyncio.sleep(min(wait_s, self.cfg.cert_check_interval_s))
                continue
            serial = self._serial()
            try:
                await self.renew_once()
                attempt = 0
            except errors.DrlabError as exc:
                attempt += 1
                log.warning("certificate_renewal_failed", error=exc.message, code=exc.code, attempt=attempt)
                if await self._identity_refused(exc, serial):
                    continue
                if self._expired() and exc.retriable:  # TLS refuses an expired certificate: start over
                    log.warning("certificate_expired", component_id=self.component_id)
                    if await self.reregister(serial):
                        continue
                await asyncio.sleep(backoff_s(attempt, max_s=self.cfg.retry_max_backoff_s))

    async def reregister(self, refused_serial: str = "") -> bool:
        """Register again with the passphrase file, or else an enrollment token file (after a
        rotation): same role, host id, address and ports, so the CS keeps the component id. True
        when a new certificate is in place; with no credential it logs and keeps running."""
        async with self._identity_lock:
            if refused_serial and self._serial() != refused_serial:
                return True  # another loop re-registered meanwhile
            if time.monotonic() < self._next_reregister:
                return False  # a failed attempt just now: every attempt costs the CS a key derivation
            self._next_reregister = time.monotonic() + self.cfg.heartbeat_interval_s
            meta = self.files.read_meta()
            token_file = self.cfg.enroll_token_file
            if self.cfg.passphrase_file is None and (token_file is None or not token_file.exists()):
                log.error("reregister_needs_credential", component_id=self.component_id,
                          action="configure passphrase_file or write a new enroll_token_file")
                return False
            if "ports" not in meta:
                log.error("reregister_impossible", component_id=self.component_id,
                          reason="the identity does not record the ports")
                return False
            try:
                credential = read_credential(self.cfg)
                if credential is None:  # checked above; the files changed meanwhile
                    return False
                new = await register(self.cfg.cs_url, credential, role=str(meta["role"]),
                                     host_id=str(meta.get("host_id") or meta["role"]),
                                     address=str(meta.get("address") or self.cfg.address),
                                     ports={k: int(v) for k, v in dict(meta["ports"]).items()}, files=self.files,
                                     timeout_s=self.cfg.request_timeout_s)
            except (errors.DrlabError, OSError) as exc:
                log.error("reregister_failed", component_id=self.component_id,
                          error=getattr(exc, "message", type(exc).__name__))
                return False
            spent_token(self.cfg, credential)
        if new["component_id"] != self.component_id:
            log.error("reregister_changed_id", old=self.component_id, new=new["component_id"])
        await self.cs.close()  # pooled connections still present the refused certificate
        self.reregistrations += 1
        log.info("reregistered", component_id=self.component_id)
        return True

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
            serial = self._serial()
            try:
                await self.poll_once(self.cfg.settings_wait_s if self.first_settings.is_set() else 0)
                attempt = 0
            except errors.DrlabError as exc:
                attempt += 1
                log.warning("settings_poll_failed", error=exc.message, code=exc.code, attempt=attempt)
                if not await self._identity_refused(exc, serial):
                    await asyncio.sleep(backoff_s(attempt, max_s=self.cfg.retry_max_backoff_s))
