"""Scraping a daemon's /metrics in tests: identities from a test CA, a GET over TLS, the samples."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from common import tls


def issue(ca: tuple[bytes, bytes], directory: Path, cid: str, role: str, cs_url: str = "") -> tls.IdentityFiles:
    files = tls.IdentityFiles(directory)
    tls.issue_local(*ca, files, component_id=cid, role=role, hosts=["127.0.0.1"],
                    meta={"component_id": cid, "role": role, "cs_url": cs_url})
    return files


async def get(ctx: ssl.SSLContext, url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.get(url) as resp:
            return resp.status, await resp.text()


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out
