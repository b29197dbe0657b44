"""Deny by default: client certificates and roles on every CS route."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from cshelpers import Site, anonymous, raw

from common import tls

ID = "ab" * 16
PROTECTED = [
    ("POST", "/v1/heartbeat"), ("GET", "/v1/settings?version=0&wait_s=0"), ("PUT", "/v1/machines/self/disks"),
    ("POST", f"/v1/disks/{ID}/progress"), ("POST", f"/v1/disks/{ID}/resync"), ("GET", "/v1/components"),
    ("GET", "/v1/disks"), ("POST", f"/v1/machines/{ID}/protect"), ("POST", f"/v1/disks/{ID}/failover"),
    ("GET", f"/v1/jobs/{ID}"), ("POST", f"/v1/jobs/{ID}/result"), ("GET", "/v1/no-such-route"),
]
ADMIN_ONLY = [
    ("GET", "/v1/components"), ("GET", "/v1/disks"), ("POST", f"/v1/machines/{ID}/protect"),
    ("POST", f"/v1/disks/{ID}/failover"), ("GET", f"/v1/jobs/{ID}"),
]
AGENT_ONLY = [("PUT", "/v1/machines/self/disks"), ("POST", f"/v1/disks/{ID}/progress")]  # resync: agent or admin


async def test_every_protected_route_needs_a_certificate(site: Site) -> None:
    ctx = anonymous(site.env)
    for method, path in PROTECTED:
        status, body = await raw(site.env.url, ctx, method, path, {})
        assert (status, body["code"]) == (401, "unauthorized"), (method, path)


async def test_public_routes_and_root(site: Site) -> None:
    ctx = anonymous(site.env)
    assert (await raw(site.env.url, ctx, "GET", "/v1/ca"))[0] == 200
    status, body = await raw(site.env.url, ctx, "GET", "/")
    assert (status, body["code"]) == (400, "bad_request")
    status, body = await raw(site.env.url, tls.client_context(site.env.admin_files), "GET", "/v1/no-such-route")
    assert (status, body["code"]) == (404, "not_found")


async def test_agent_cannot_call_admin_routes(site: Site) -> None:
    agent, _ = await site.agent()
    for method, path in ADMIN_ONLY:
        status, body = await raw(site.env.url, agent.ssl, method, path, {"point": "latest"})
        assert (status, body["code"]) == (403, "forbidden"), (method, path)


async def test_other_roles_cannot_call_agent_or_mt_routes(site: Site) -> None:
    ps = await site.ps()
    admin_ctx = tls.client_context(site.env.admin_files)
    for ctx in (ps.ssl, admin_ctx):
        for method, path in AGENT_ONLY:
            status, body = await raw(site.env.url, ctx, method, path, {"disks": []})
            assert (status, body["code"]) == (403, "forbidden"), (method, path)
    agent, _ = await site.agent()
    status, body = await raw(site.env.url, agent.ssl, "POST", f"/v1/jobs/{ID}/result", {"state": "failed"})
    assert (status, body["code"]) == (403, "forbidden")
    status, body = await raw(site.env.url, admin_ctx, "GET", "/v1/settings?version=0&wait_s=0")
    assert (status, body["code"]) == (403, "forbidden")


async def test_certificate_of_another_ca_gets_nothing(site: Site, tmp_path: Path) -> None:
    key_pem, cert_pem = tls.make_ca()
    files = tls.IdentityFiles(tmp_path / "rogue")
    tls.issue_local(key_pem, cert_pem, files, component_id=ID, role="admin", hosts=[], meta={})
    files.ca.write_bytes((site.env.data_dir / "ca" / "cert.pem").read_bytes())  # trust the real CS
    # The server verifies a certificate that is sent: the TLS handshake itself fails.
    with pytest.raises(aiohttp.ClientError):
        await raw(site.env.url, tls.client_context(files), "GET", "/v1/components")


def test_role_rules() -> None:
    from common.http import role_allows

    assert role_allows(("admin",), "admin", "POST")
    assert role_allows(("admin",), "reader", "GET") and role_allows(("admin",), "reader", "HEAD")
    assert not role_allows(("admin",), "reader", "POST") and not role_allows(("admin",), "reader", "DELETE")
    assert role_allows(("admin", "reader"), "reader", "POST")  # a route naming reader (logout)
    assert not role_allows(("agent",), "reader", "GET") and not role_allows(("agent",), "admin", "GET")
    assert not role_allows(("admin",), "agent", "GET")
