"""A disk moved to another PS (a PS switch with this one alive): its settings entry says
``draining``; the agent's new batches are refused with a retriable 503, what is cached stays to
be uploaded, and the heartbeat says so."""

from __future__ import annotations

import base64

from psbatches import make_batch
from test_ps_ingest import DISK, MACHINE_A, SIZE, Server
from test_ps_ingest import server as ingest_server  # noqa: F401  (the fixture, by this name)

from ps.state import DiskSettings

ENTRY = {"disk_id": DISK, "machine_id": MACHINE_A, "generation": 2, "size_bytes": SIZE, "mt_url": "",
         "mt_control_url": "", "key_epoch": 1, "key_b64": base64.b64encode(bytes(32)).decode()}


def test_the_settings_entry_says_draining_only_when_true() -> None:
    assert DiskSettings.from_doc({**ENTRY, "draining": True}).draining
    assert not DiskSettings.from_doc(ENTRY).draining
    assert not DiskSettings.from_doc({**ENTRY, "draining": "yes"}).draining  # only a JSON true


async def test_a_draining_disk_refuses_new_batches_and_keeps_what_it_cached(ingest_server: Server) -> None:  # noqa: F811
    server = ingest_server
    status, _, _ = await server.put("a", 2, 1, make_batch(DISK, 2, 1))
    assert status == 201 and len(server.cached()) == 1
    server.registry.apply_document({"disks": [{**ENTRY, "draining": True}]})
    status, body, headers = await server.put("a", 2, 2, make_batch(DISK, 2, 2))
    assert status == 503 and body["code"] == "unavailable" and "moved" in body["message"]
    assert len(server.cached()) == 1  # nothing stored; the cached batch stays for the uploader
    status, body, _ = await server.call("a", "GET", f"/v1/disks/{DISK}/status")
    assert status == 200 and body["backlog_batches"] == 1
