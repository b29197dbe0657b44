"""Shared by the hostile-input tests (tests/*/test_hostile_*.py): IDs with path separators and
injection attempts, an expired identity, and a fixture that keeps the CA a test fixture makes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import tls

# Path parameters as a client would put them in a URL (already percent-encoded where needed).
HOSTILE_IDS = {
    "dotdot": "..",
    "dotdot-slash": "..%2F..%2Fetc%2Fpasswd",
    "encoded-dots": "%2e%2e",
    "double-encoded": "%252e%252e%252f",
    "quote": "x'%20OR%20'1'='1",
    "double-quote": "%22%3B%20DROP%20TABLE%20components%3B--",
    "nul": "ab%00cd",
    "backslash": "..%5C..%5Cwindows",
    "long": "a" * 4000,
}


@pytest.fixture
def capture_ca(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[bytes, bytes]]]:
    """Every CA (key PEM, cert PEM) that ``tls.make_ca`` makes during the test, in order: ask for
    this fixture BEFORE the one that makes the CA, to issue more identities of that CA."""
    made: list[tuple[bytes, bytes]] = []
    real = tls.make_ca

    def spy(*args: object, **kwargs: object) -> tuple[bytes, bytes]:
        made.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(tls, "make_ca", spy)
    yield made


async def expired_identity(ca: tuple[bytes, bytes], directory: Path, cid: str, role: str) -> tls.IdentityFiles:
    """An identity of ``ca`` whose certificate has expired (valid a fifth of a second, then waited
    out: the expiry plus 1.2 s, as certificate times have whole seconds)."""
    files = tls.IdentityFiles(directory)
    tls.issue_local(*ca, files, component_id=cid, role=role, hosts=["127.0.0.1"], meta={"component_id": cid},
                    validity_s=0.2)
    _, not_after = tls.validity(files.cert.read_bytes())
    await asyncio.sleep(max(0.0, not_after - time.time()) + 1.2)
    return files
