"""A world for the PS's hypervisor work: the fake CS with the PS-facing routes (psfakehv), a PS
identity and its mTLS client to that CS, and a real in-process hypervisor (tests/deploy/hvlab.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from psfakehv import HvFakeCS

from common import tls
from common.http import ApiClient
from deploy.hypervisor import HypervisorService
from tests.deploy.hvlab import ADMIN, hv_config, running_hv

PS_ID = "22" * 16


@dataclass
class HvWorld:
    cs: HvFakeCS
    cs_url: str
    client: ApiClient  # the PS's mTLS client to the CS
    hv: HypervisorService
    ps_identity: Path
    ca: tuple[bytes, bytes]


def issue(ca: tuple[bytes, bytes], directory: Path, cid: str, role: str, cs_url: str = "") -> tls.IdentityFiles:
    files = tls.IdentityFiles(directory)
    tls.issue_local(*ca, files, component_id=cid, role=role, hosts=["127.0.0.1"],
                    meta={"component_id": cid, "role": role, "cs_url": cs_url})
    return files


@contextlib.asynccontextmanager
async def hv_world(tmp_path: Path) -> AsyncIterator[HvWorld]:
    ca = tls.make_ca()
    cs = HvFakeCS(credentials={"vc1": {"username": ADMIN[0], "password": ADMIN[1]}})
    cs_url = await cs.start(issue(ca, tmp_path / "cs", "cc" * 16, "cs"))
    ps_files = issue(ca, tmp_path / "ps" / "identity", PS_ID, "ps", cs_url)
    client = ApiClient(cs_url, tls.client_context(ps_files), timeout_s=5.0)
    try:
        async with running_hv(hv_config(tmp_path / "hv")) as hv:
            yield HvWorld(cs, cs_url, client, hv, tmp_path / "ps", ca)
    finally:
        await client.close()
        await cs.stop()


def hv_item(world: HvWorld, fingerprint: str | None = None, seq: int = 1) -> dict[str, object]:
    return {"name": "vc1", "address": "127.0.0.1", "port": world.hv.port, "account": "vcenter-admin",
            "fingerprint": fingerprint, "discover_seq": seq}


async def wait_until(pred: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
