"""The PS's client to an on-prem hypervisor (deploy/hypervisor.py's API).

Rules: with a fingerprint the TLS peer must present exactly that certificate (aiohttp.Fingerprint,
sha256 of the DER form); without one the first connection is trusted (trust on first use) and the
certificate's fingerprint it saw is returned, for the CS to pin. Credentials are passed per call and
kept by nobody here. Failures are :mod:`common.errors` with these codes: ``unreachable`` (connect,
TLS or timeout), ``fingerprint_mismatch``, and the hypervisor's own code for its HTTP errors (e.g.
``unauthorized``, ``guest_credentials_refused``, ``vm_powered_off``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from common import errors

FINGERPRINT_LEN = 64


@dataclass(frozen=True)
class Target:
    address: str
    port: int
    fingerprint: str | None = None  # sha256 hex; None: trust on first use
    timeout_s: float = 30.0

    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.port}"


@dataclass(frozen=True)
class Basic:
    username: str
    password: str = field(repr=False)


class _Pin(aiohttp.Fingerprint):
    """aiohttp's fingerprint check that also records the certificate seen; with no expected
    fingerprint it accepts any (trust on first use) and only records it."""

    def __init__(self, expected: str | None) -> None:
        try:
            digest = bytes.fromhex(expected) if expected else bytes(32)
        except ValueError as exc:
            raise errors.BadRequest("the pinned fingerprint is not sha256 hex") from exc
        if len(digest) != 32:
            raise errors.BadRequest("the pinned fingerprint is not sha256 hex")
        super().__init__(digest)
        self.tofu = not expected
        self.seen = ""

    def check(self, transport: asyncio.Transport) -> None:
        ssl_obj = transport.get_extra_info("ssl_object")
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
        self.seen = hashlib.sha256(der).hexdigest() if der else ""
        if not self.tofu:
            super().check(transport)


async def call(target: Target, method: str, path: str, auth: Basic,
               body: dict[str, Any] | None = None) -> tuple[str, Any]:
    """One request; returns (the peer certificate's sha256 hex, the JSON answer)."""
    timeout = aiohttp.ClientTimeout(total=target.timeout_s, sock_connect=min(10.0, target.timeout_s))
    pin = _Pin(target.fingerprint)
    headers = {"Authorization": aiohttp.encode_basic_auth(auth.username, auth.password)}
    connector = aiohttp.TCPConnector(ssl=pin, force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, \
                session.request(method, target.base_url + path, json=body,
                                headers=headers) as resp:
            try:
                answer = await resp.json(content_type=None)
            except ValueError:
                answer = {"code": "bad_response", "message": (await resp.text())[:200]}
            if resp.status >= 400:
                raise errors.from_response(resp.status, answer)
            return pin.seen, answer
    except aiohttp.ServerFingerprintMismatch as exc:
        raise errors.Conflict(f"the hypervisor at {target.base_url} presented certificate {exc.got.hex()}, "
                              f"not the pinned {exc.expected.hex()}", code="fingerprint_mismatch") from exc
    except (TimeoutError, aiohttp.ClientError, ConnectionError, ssl.SSLError) as exc:
        raise errors.TransportError(f"hypervisor at {target.base_url} unreachable: {type(exc).__name__}: {exc}",
                                    code="unreachable") from exc
