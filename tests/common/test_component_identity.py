"""Component identity handling without a CS: live TLS contexts switch to a renewed certificate,
old identities learn their ports, and a re-registration without a passphrase file is refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from cryptography import x509

from common import component, tls
from common.config import ComponentConfig

CID = "ab" * 16


def issue(ca: tuple[bytes, bytes], files: tls.IdentityFiles, meta: dict[str, Any] | None) -> None:
    tls.issue_local(*ca, files, component_id=CID, role="ps", hosts=["127.0.0.1"], meta=meta, validity_s=3600)


async def presented_serial(port: int, ca_pem: bytes) -> int:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls.client_context(None, ca_pem=ca_pem),
                                              server_hostname="127.0.0.1")
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return int(x509.load_der_x509_certificate(der).serial_number)


async def test_a_running_server_presents_the_renewed_certificate(tmp_path: Path) -> None:
    ca = tls.make_ca()
    files = tls.IdentityFiles(tmp_path / "identity")
    issue(ca, files, {"component_id": CID, "role": "ps"})

    async def echo(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=tls.server_context(files))
    port = server.sockets[0].getsockname()[1]
    try:
        first = await presented_serial(port, ca[1])
        assert first == int(tls.serial_hex(files.cert.read_bytes()), 16)
        issue(ca, files, None)  # renewal: key and certificate only, via the pending files
        assert files.read_meta() == {"component_id": CID, "role": "ps"}
        assert not list(files.directory.glob("*.pending"))
        assert tls.reload_contexts(files) >= 1
        second = await presented_serial(port, ca[1])
        assert second != first and second == int(tls.serial_hex(files.cert.read_bytes()), 16)
    finally:
        server.close()
        await server.wait_closed()


async def test_old_identity_learns_its_ports_for_reregistration(tmp_path: Path) -> None:
    ca = tls.make_ca()
    cfg = ComponentConfig(data_dir=tmp_path, address="127.0.0.9")
    files = tls.IdentityFiles(tmp_path / "identity")
    issue(ca, files, {"component_id": CID, "role": "ps", "host_id": "ps1"})
    got = await component.ensure_identity(cfg, "ps", {"data": 9443})
    assert got == files
    assert json.loads(files.meta.read_text())["ports"] == {"data": 9443}
    assert files.read_meta()["address"] == "127.0.0.9"


async def test_reregistration_needs_a_passphrase_file(tmp_path: Path) -> None:
    ca = tls.make_ca()
    files = tls.IdentityFiles(tmp_path / "identity")
    issue(ca, files, {"component_id": CID, "role": "ps", "host_id": "ps1", "ports": {"data": 1}})
    cfg = ComponentConfig(data_dir=tmp_path, cs_url="https://127.0.0.1:9", passphrase_file=None,
                          heartbeat_interval_s=0.0)  # no pause between two failed re-registrations

    async def noop(_doc: dict[str, Any]) -> None:
        return None

    control = component.ControlPlane(cfg, files, on_settings=noop, metrics=dict)
    try:
        before = files.cert.read_bytes()
        assert await control.reregister() is False
        assert files.cert.read_bytes() == before
        cfg.passphrase_file = tmp_path / "missing-passphrase"
        assert await control.reregister() is False  # unreadable file: refused, identity unchanged
        assert files.cert.read_bytes() == before and control.reregistrations == 0
    finally:
        await control.stop()
