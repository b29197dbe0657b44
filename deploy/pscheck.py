"""The end-to-end check of a process server's data port (``drlab ps check``; the documented
``cxpsclient -i PS_IP -l PORT -y TIMEOUT``): the steps in order, each timed, the first failure
ending the check (the later steps are not run).

1. ``TCP connect`` — the port accepts connections (a firewall or a stopped PS fails here).
2. ``TLS handshake`` — the PS's certificate verifies against the CS's CA (the admin identity's
   ``ca.pem``) for the address given, and the handshake completes with the admin certificate.
3. ``authentication`` — ``GET /v1/check`` with the admin certificate answers 200 from a PS.
4. ``test upload`` — ``PUT /v1/check/upload/{id}`` of a few random KiB answers 201 with their SHA-256.
5. ``test removal`` — ``DELETE`` of it answers 200.

The whole check is bounded by ``timeout_s``: each step gets what is left of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

STEPS = ("TCP connect", "TLS handshake", "authentication", "test upload", "test removal")
PAYLOAD_BYTES = 4096


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class Report:
    steps: tuple[Step, ...]

    @property
    def ok(self) -> bool:
        return len(self.steps) == len(STEPS) and all(s.ok for s in self.steps)

    @property
    def failed(self) -> Step | None:
        return next((s for s in self.steps if not s.ok), None)


def render(report: Report, address: str, port: int) -> list[str]:
    """The lines ``drlab ps check`` prints (pure): one per step run, then the verdict."""
    lines = [f"{s.name:<16} {'ok' if s.ok else 'FAILED':<7} {s.seconds * 1000:8.1f} ms"
             + (f"  {s.detail}" if s.detail else "") for s in report.steps]
    failed = report.failed
    if failed is None:
        lines.append(f"process server {address}:{port}: every step passed")
    else:
        lines.append(f"{failed.name} failed: {failed.detail}")
    return lines


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


class _Checker:
    def __init__(self, address: str, port: int, ctx: ssl.SSLContext, timeout_s: float) -> None:
        self.address, self.port, self.ctx = address, port, ctx
        self.deadline = time.monotonic() + timeout_s
        self.base = f"https://{address if ':' not in address else f'[{address}]'}:{port}"
        self.check_id = os.urandom(8).hex()
        self.payload = os.urandom(PAYLOAD_BYTES)

    def left(self) -> float:
        return max(0.001, self.deadline - time.monotonic())

    async def tcp(self, _: aiohttp.ClientSession) -> str:
        _reader, writer = await asyncio.open_connection(self.address, self.port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return ""

    async def tls(self, _: aiohttp.ClientSession) -> str:
        _reader, writer = await asyncio.open_connection(self.address, self.port, ssl=self.ctx,
                                                  server_hostname=self.address)
        obj = writer.get_extra_info("ssl_object")
        version = obj.version() if obj is not None else "?"
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return f"{version}, certificate issued by the CS's CA"

    async def _call(self, session: aiohttp.ClientSession, method: str, path: str, expect: int,
                    data: bytes | None = None) -> dict[str, Any]:
        async with session.request(method, self.base + path, data=data,
                                   timeout=aiohttp.ClientTimeout(total=self.left())) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            if resp.status != expect:
                message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
                raise RuntimeError(f"HTTP {resp.status}" + (f": {message}" if message else ""))
            if not isinstance(body, dict):
                raise RuntimeError(f"HTTP {resp.status} without a JSON object: not a drlab process server?")
            return body

    async def auth(self, session: aiohttp.ClientSession) -> str:
        body = await self._call(session, "GET", "/v1/check", 200)
        if body.get("role") != "ps":
            raise RuntimeError(f"the server is not a process server (role {body.get('role')!r})")
        return f"accepted the admin certificate (PS {body.get('component_id') or '?'})"

    async def upload(self, session: aiohttp.ClientSession) -> str:
        body = await self._call(session, "PUT", f"/v1/check/upload/{self.check_id}", 201, self.payload)
        if body.get("sha256") != hashlib.sha256(self.payload).hexdigest():
            raise RuntimeError("the PS stored other bytes than were sent (SHA-256 differs)")
        return f"{len(self.payload)} bytes stored"

    async def remove(self, session: aiohttp.ClientSession) -> str:
        await self._call(session, "DELETE", f"/v1/check/upload/{self.check_id}", 200)
        return "removed"


async def check(address: str, port: int, ctx: ssl.SSLContext, timeout_s: float) -> Report:
    """Run the steps against ``address:port``; ``ctx`` verifies the PS and presents the admin certificate."""
    c = _Checker(address, port, ctx, timeout_s)
    run: list[Callable[[aiohttp.ClientSession], Awaitable[str]]] = [c.tcp, c.tls, c.auth, c.upload, c.remove]
    steps: list[Step] = []
    connector = aiohttp.TCPConnector(ssl=ctx, limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for name, fn in zip(STEPS, run, strict=True):
            started = time.monotonic()
            try:
                async with asyncio.timeout(c.left()):
                    detail = await fn(session)
            except Exception as exc:  # every failure is this step's verdict
                cause = exc.__cause__ if isinstance(exc, aiohttp.ClientError) and exc.__cause__ else exc
                steps.append(Step(name, False, time.monotonic() - started, _describe(cause)))
                break
            steps.append(Step(name, True, time.monotonic() - started, detail))
    return Report(tuple(steps))
