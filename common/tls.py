"""The CS's certificate authority, component certificates and TLS contexts.

Certificates carry the component id in CN and the role in OU. Servers accept a TLS
handshake without a client certificate (so the registration routes work) and verify one
against the CA when it is sent; authorisation is then done per route (deny by default).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("cs", "ps", "mt", "agent", "admin")


@dataclass(frozen=True)
class Identity:
    component_id: str
    role: str
    serial: int


@dataclass(frozen=True)
class IdentityFiles:
    """Where a component keeps its key, certificate and the CA certificate."""

    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def meta(self) -> Path:
        return self.directory / "identity.json"

    def exists(self) -> bool:
        return self.key.exists() and self.cert.exists() and self.ca.exists() and self.meta.exists()

    def read_meta(self) -> dict[str, Any]:
        return dict(json.loads(self.meta.read_text()))

    def write(self, key_pem: bytes, cert_pem: bytes, ca_pem: bytes, meta: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_private(self.key, key_pem)
        durable_write(self.cert, cert_pem)
        durable_write(self.ca, ca_pem)
        durable_write(self.meta, json.dumps(meta, indent=2).encode())


def durable_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via temp file + fsync + rename + directory fsync."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_private(path: Path, data: bytes) -> None:
    durable_write(path, data, mode=0o600)
    os.chmod(path, 0o600)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, role: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "drlab"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_ca(common_name: str = "drlab CA", days: int = 3650) -> tuple[bytes, bytes]:
    """A new CA: (key PEM, certificate PEM)."""
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "drlab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def make_csr(key: ec.EllipticCurvePrivateKey, role: str, host_id: str) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(host_id, role)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def issue(ca_key_pem: bytes, ca_cert_pem: bytes, csr_pem: bytes, *, component_id: str, role: str,
          hosts: list[str], days: int = 365) -> bytes:
    """Sign a component certificate. The CSR only contributes its public key: the CS decides
    the subject (component id, role) and the names."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    csr = x509.load_pem_x509_csr(csr_pem)
    if not csr.is_signature_valid:
        raise ValueError("CSR signature is not valid")
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(component_id, role)).issuer_name(ca_cert.subject)
        .public_key(csr.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM)


def issue_local(ca_key_pem: bytes, ca_cert_pem: bytes, files: IdentityFiles, *, component_id: str,
                role: str, hosts: list[str], meta: dict[str, Any]) -> None:
    """Make a key and certificate directly with the CA (for the CS itself and the admin)."""
    key = new_key()
    cert = issue(ca_key_pem, ca_cert_pem, make_csr(key, role, component_id), component_id=component_id,
                 role=role, hosts=hosts)
    files.write(key_pem(key), cert, ca_cert_pem, meta)


def der_of_pem(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def server_context(files: IdentityFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(files: IdentityFiles | None, ca_pem: bytes | None = None) -> ssl.SSLContext:
    """Verify the server against the CA; present our certificate when we have one."""
    if files is not None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
        ctx.load_cert_chain(str(files.cert), str(files.key))
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cadata=ca_pem.decode() if ca_pem else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def bootstrap_context() -> ssl.SSLContext:
    """Before registration a component cannot verify the CS: the registration proof (HMAC over
    the CA certificate and the issued certificate) authenticates the CS instead. Used only for
    the allow-listed registration routes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # authenticated by the registration proof, see docstring
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def identity_from_peercert(peercert: dict[str, Any] | None) -> Identity | None:
    """Extract (component id, role, serial) from ``SSLObject.getpeercert()`` of a verified peer."""
    if not peercert:
        return None
    fields: dict[str, str] = {}
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            fields[key] = value
    cn, role = fields.get("commonName"), fields.get("organizationalUnitName")
    if not cn or role not in ROLES:
        return None
    return Identity(component_id=cn, role=role, serial=int(peercert.get("serialNumber", "0"), 16))
