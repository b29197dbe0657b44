"""Where the CS keeps its CA and its own identities inside ``data_dir``, and the renewal of
those identities (the CS's server certificate and the admin's) before they expire."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from common import errors, tls
from common import logging as dlog
from common.config import CSConfig
from common.http import backoff_s

log = dlog.get("drlab.cs.ca")


@dataclass(frozen=True)
class Layout:
    data_dir: Path

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "key.pem"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "cert.pem"

    @property
    def passphrase_file(self) -> Path:
        return self.data_dir / "passphrase.txt"

    @property
    def identity(self) -> tls.IdentityFiles:
        return tls.IdentityFiles(self.data_dir / "identity")

    @property
    def admin(self) -> tls.IdentityFiles:
        return tls.IdentityFiles(self.data_dir / "admin")

    def any_exists(self) -> bool:
        return any(p.exists() for p in (self.ca_key, self.ca_cert, self.passphrase_file,
                                        self.identity.directory, self.admin.directory))


@dataclass(frozen=True)
class CA:
    """The CA key and certificate (PEM). The key never leaves the CS."""

    key_pem: bytes
    cert_pem: bytes

    def __repr__(self) -> str:
        return "CA(***)"

    @classmethod
    def load(cls, layout: Layout) -> CA:
        try:
            return cls(key_pem=layout.ca_key.read_bytes(), cert_pem=layout.ca_cert.read_bytes())
        except OSError as exc:
            raise errors.ConfigError(f"no CA in {layout.ca_dir} (run `drlab cs init`): {exc}") from exc

    @classmethod
    def create(cls, layout: Layout) -> CA:
        key_pem, cert_pem = tls.make_ca()
        layout.ca_dir.mkdir(parents=True, exist_ok=True)
        layout.ca_dir.chmod(0o700)
        tls.write_private(layout.ca_key, key_pem)
        tls.durable_write(layout.ca_cert, cert_pem)
        return cls(key_pem=key_pem, cert_pem=cert_pem)

    def issue_local(self, files: tls.IdentityFiles, *, role: str, hosts: list[str], cs_url: str,
                    validity_s: float | None = None) -> str:
        """Key + certificate for the CS itself or the admin CLI; returns the new id."""
        component_id = uuid.uuid4().hex
        tls.issue_local(self.key_pem, self.cert_pem, files, component_id=component_id, role=role, hosts=hosts,
                        meta={"component_id": component_id, "role": role, "cs_url": cs_url}, validity_s=validity_s)
        return component_id

    def issue(self, csr_pem: bytes, *, component_id: str, role: str, hosts: list[str], validity_s: float) -> bytes:
        try:
            return tls.issue(self.key_pem, self.cert_pem, csr_pem, component_id=component_id, role=role,
                             hosts=hosts, validity_s=validity_s)
        except ValueError as exc:
            raise errors.BadRequest(f"cannot issue a certificate: {exc}") from exc

    def renew_local(self, files: tls.IdentityFiles, *, validity_s: float) -> None:
        """A new key and certificate for a local identity (same id, role and names); the caller
        then loads them into the live contexts with :func:`tls.reload_contexts`."""
        meta = files.read_meta()
        hosts = tls.cert_hosts(files.cert.read_bytes())
        tls.issue_local(self.key_pem, self.cert_pem, files, component_id=str(meta["component_id"]),
                        role=str(meta["role"]), hosts=hosts, meta=None, validity_s=validity_s)


async def renew_local_identities(ca: CA, layout: Layout, *, fraction: float, validity_s: float,
                                 check_interval_s: float) -> None:
    """Forever: renew the CS's server identity and the admin identity once less than ``fraction``
    of their validity remains (the server picks its new certificate up without a restart)."""
    attempt = 0
    while True:
        try:
            wait_s = check_interval_s
            for files in (layout.identity, layout.admin):
                if not files.exists():
                    continue
                if tls.seconds_until_renewal(files.cert.read_bytes(), fraction) <= 0:
                    await asyncio.to_thread(ca.renew_local, files, validity_s=validity_s)
                    tls.reload_contexts(files)  # on the loop's thread, where the contexts are used
                    log.info("local_certificate_renewed", identity=files.directory.name)
                wait_s = min(wait_s, tls.seconds_until_renewal(files.cert.read_bytes(), fraction))
            attempt = 0
            await asyncio.sleep(max(0.05, wait_s))
        except (OSError, ValueError, KeyError) as exc:
            attempt += 1
            log.error("local_certificate_renewal_failed", error=f"{type(exc).__name__}: {exc}", attempt=attempt)
            await asyncio.sleep(backoff_s(attempt, max_s=min(60.0, check_interval_s)))



def install_renewal(app: web.Application, ca: CA, cfg: CSConfig) -> None:
    """Run :func:`renew_local_identities` for as long as the CS app runs."""

    async def renewer(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(renew_local_identities(
            ca, Layout(cfg.data_dir), fraction=cfg.cert_renew_fraction, validity_s=cfg.cert_validity(),
            check_interval_s=cfg.cert_check_interval_s), name="cs-cert-renewal")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(renewer)
