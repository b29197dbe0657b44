"""Where the CS keeps its CA and its own identities inside ``data_dir``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from common import errors, tls


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

    def issue_local(self, files: tls.IdentityFiles, *, role: str, hosts: list[str], cs_url: str) -> str:
        """Key + certificate for the CS itself or the admin CLI; returns the new id."""
        component_id = uuid.uuid4().hex
        tls.issue_local(self.key_pem, self.cert_pem, files, component_id=component_id, role=role, hosts=hosts,
                        meta={"component_id": component_id, "role": role, "cs_url": cs_url})
        return component_id

    def issue(self, csr_pem: bytes, *, component_id: str, role: str, hosts: list[str], days: int) -> bytes:
        try:
            return tls.issue(self.key_pem, self.cert_pem, csr_pem, component_id=component_id, role=role,
                             hosts=hosts, days=days)
        except ValueError as exc:
            raise errors.BadRequest(f"cannot issue a certificate: {exc}") from exc
