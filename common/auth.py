"""Passphrase proofs for registration: the passphrase itself never travels.

The CS keeps only ``key = scrypt(passphrase, salt)``. A component fetches a challenge
(server nonce, salt), derives the same key and proves knowledge with an HMAC over both
nonces, its role, host id and CSR. The CS answers with its own HMAC over the same and over
the CA certificate and the certificate it issued, so a relay cannot substitute its own CA.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KDF_N, KDF_R, KDF_P = 2**14, 8, 1
NONCE_BYTES = 32


@dataclass(frozen=True)
class Passphrase:
    """Wraps the secret so that it never shows in a repr or a log line."""

    value: str

    def __repr__(self) -> str:
        return "Passphrase(***)"

    __str__ = __repr__


def new_passphrase() -> Passphrase:
    return Passphrase(secrets.token_urlsafe(24))


def derive_key(passphrase: Passphrase, salt: bytes, n: int = KDF_N, r: int = KDF_R, p: int = KDF_P) -> bytes:
    return hashlib.scrypt(passphrase.value.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=64 * 1024 * 1024)


def nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def _mac(key: bytes, label: bytes, parts: list[bytes]) -> bytes:
    mac = hmac.new(key, label, hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(4, "little"))
        mac.update(part)
    return mac.digest()


def client_proof(key: bytes, *, server_nonce: bytes, client_nonce: bytes, role: str, host_id: str,
                 csr_pem: bytes) -> bytes:
    return _mac(key, b"drlab-register-client-v1",
                [server_nonce, client_nonce, role.encode(), host_id.encode(), hashlib.sha256(csr_pem).digest()])


def server_proof(key: bytes, *, server_nonce: bytes, client_nonce: bytes, role: str, host_id: str,
                 ca_der: bytes, cert_der: bytes) -> bytes:
    return _mac(key, b"drlab-register-server-v1",
                [server_nonce, client_nonce, role.encode(), host_id.encode(),
                 hashlib.sha256(ca_der).digest(), hashlib.sha256(cert_der).digest()])


def equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def read_passphrase_file(path: str) -> Passphrase:
    with open(path) as fh:
        return Passphrase(fh.read().strip())
