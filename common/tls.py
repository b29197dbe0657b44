"""The CS's certificate authority, component certificates and TLS contexts.

Certificates carry the component id in CN and the role in OU. Servers accept a TLS
handshake without a client certificate (so the registration routes work) and verify one
against the CA when it is sent; authorisation is then done per route (deny by default).

Renewal without a restart: every context made from an :class:`IdentityFiles` is remembered
(weakly); :func:`reload_contexts` loads the renewed key and certificate into all of them, so
the next handshake of every server and client of the process uses the new certificate.
A renewed pair is written as ``*.pending`` files first and then renamed key-then-certificate;
:meth:`IdentityFiles.complete_pending` finishes (or drops) a replacement a crash interrupted.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import ssl
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common import formats

ROLES = ("cs", "ps", "mt", "agent", "admin")
META_FORMAT = 1  # identity/identity.json's "format" field (common/formats.py: none is 1)


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
        """identity.json without its ``format`` field (common/formats.py: none is 1, a newer one is refused)."""
        doc = json.loads(self.meta.read_text())
        formats.of_doc(f"identity {self.meta}", doc, META_FORMAT)
        return {k: v for k, v in doc.items() if k != formats.FORMAT_KEY}

    def write(self, key_pem: bytes, cert_pem: bytes, ca_pem: bytes, meta: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        durable_write(self.ca, ca_pem)
        durable_write(self.meta, json.dumps({**meta, formats.FORMAT_KEY: META_FORMAT}, indent=2).encode())
        self.replace_pair(key_pem, cert_pem)

    def _pending(self, path: Path) -> Path:
        return path.with_name(path.name + ".pending")

    def replace_pair(self, key_pem: bytes, cert_pem: bytes) -> None:
        """Replace key and certificate so that a crash leaves a matching pair (see the module doc)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_private(self._pending(self.key), key_pem)
        durable_write(self._pending(self.cert), cert_pem)
        self.complete_pending()

    def complete_pending(self) -> None:
        """Finish a replacement whose certificate was written; drop one whose was not."""
        key_p, cert_p = self._pending(self.key), self._pending(self.cert)
        if cert_p.exists():
            if key_p.exists():
                os.replace(key_p, self.key)
            os.replace(cert_p, self.cert)
            _fsync_dir(self.directory)
        elif key_p.exists():
            key_p.unlink()


def durable_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via temp file + fsync + rename + directory fsync. A failure (ENOSPC: a full disk)
    leaves the old file as it was and removes the temp file; a short write is continued, never
    renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    write_synced(tmp, data, mode, exclusive=False)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_synced(path: Path, data: bytes | bytearray | memoryview, mode: int = 0o600, *,
                 exclusive: bool = True) -> None:
    """Create ``path`` (``exclusive``: it must not exist; else truncated), write all of ``data``
    (short writes continued) and fsync; any failure (ENOSPC) removes it and re-raises."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY)
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


def backdate_s(validity_s: float) -> float:
    """How far before "now" a certificate starts (clock skew): 5 minutes, less for short lives."""
    return min(300.0, validity_s / 4)


def issue(ca_key_pem: bytes, ca_cert_pem: bytes, csr_pem: bytes, *, component_id: str, role: str,
          hosts: list[str], days: int = 365, validity_s: float | None = None) -> bytes:
    """Sign a component certificate valid for ``validity_s`` seconds (default ``days``). The CSR
    only contributes its public key: the CS decides the subject (component id, role) and the names."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    csr = x509.load_pem_x509_csr(csr_pem)
    if not csr.is_signature_valid:
        raise ValueError("CSR signature is not valid")
    now = dt.datetime.now(dt.UTC)
    life_s = float(validity_s) if validity_s else days * 86400.0
    builder = (
        x509.CertificateBuilder().subject_name(_name(component_id, role)).issuer_name(ca_cert.subject)
        .public_key(csr.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=backdate_s(life_s)))
        .not_valid_after(now + dt.timedelta(seconds=life_s))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM)


def issue_local(ca_key_pem: bytes, ca_cert_pem: bytes, files: IdentityFiles, *, component_id: str,
                role: str, hosts: list[str], meta: dict[str, Any] | None, validity_s: float | None = None) -> None:
    """Make a key and certificate directly with the CA (for the CS itself and the admin).
    ``meta=None`` renews an existing identity: only key and certificate are replaced."""
    key = new_key()
    cert = issue(ca_key_pem, ca_cert_pem, make_csr(key, role, component_id), component_id=component_id,
                 role=role, hosts=hosts, validity_s=validity_s)
    if meta is None:
        files.replace_pair(key_pem(key), cert)
    else:
        files.write(key_pem(key), cert, ca_cert_pem, meta)


def serial_hex(cert_pem: bytes) -> str:
    return format(x509.load_pem_x509_certificate(cert_pem).serial_number, "x")


def validity(cert_pem: bytes) -> tuple[float, float]:
    """(not before, not after) of a certificate, in seconds since the epoch."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def renew_at(cert_pem: bytes, fraction: float) -> float:
    """When to renew: once less than ``fraction`` of the certificate's validity period remains."""
    start, end = validity(cert_pem)
    return end - fraction * (end - start)


def seconds_until_renewal(cert_pem: bytes, fraction: float, now: float | None = None) -> float:
    return renew_at(cert_pem, fraction) - (time.time() if now is None else now)


def cert_hosts(cert_pem: bytes) -> list[str]:
    """The DNS names and IP addresses a certificate names (its subject alternative names)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def check_issued(cert_pem: bytes, ca_pem: bytes, key: ec.EllipticCurvePrivateKey) -> None:
    """Refuse (ValueError) a certificate not signed by the CA or not for our key."""
    cert, ca = x509.load_pem_x509_certificate(cert_pem), x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ValueError(f"certificate not issued by the CA: {exc}") from exc
    if cert.public_key() != key.public_key():
        raise ValueError("certificate is not for our key")


def der_of_pem(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


_LIVE: dict[Path, weakref.WeakSet[ssl.SSLContext]] = {}


def _remember(files: IdentityFiles, ctx: ssl.SSLContext) -> ssl.SSLContext:
    _LIVE.setdefault(files.directory.resolve(), weakref.WeakSet()).add(ctx)
    return ctx


def reload_contexts(files: IdentityFiles) -> int:
    """Load the current key and certificate of ``files`` into every live context made from them
    (new handshakes use them; open connections keep theirs). Returns how many were reloaded."""
    files.complete_pending()
    live = list(_LIVE.get(files.directory.resolve(), ()))
    for ctx in live:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    return len(live)


def server_context(files: IdentityFiles) -> ssl.SSLContext:
    files.complete_pending()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return _remember(files, ctx)


def client_context(files: IdentityFiles | None, ca_pem: bytes | None = None) -> ssl.SSLContext:
    """Verify the server against the CA; present our certificate when we have one."""
    if files is not None:
        files.complete_pending()
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
        ctx.load_cert_chain(str(files.cert), str(files.key))
        _remember(files, ctx)
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
