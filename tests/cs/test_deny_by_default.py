"""Deny by default, proven on the OpenAPI document: every route refuses a caller without a
certificate or a session (401, JSON {code, message}) except the architecture's allow-list; a
component certificate on an admin route gets 403; every error is JSON {code, message}."""

from __future__ import annotations

from typing import Any

from cshelpers import Site, anonymous
from ophelpers import PUBLIC, call, client, is_error, operations

from common import tls


async def _ops(site: Site) -> list[Any]:
    status, doc, _ = await call(site.env.url, anonymous(site.env), "GET", "/v1/openapi.json")
    assert status == 200
    return operations(doc)


async def test_every_route_of_the_document_refuses_an_anonymous_caller(site: Site) -> None:
    ctx = anonymous(site.env)
    refused, allowed = 0, set()
    every_creds: list[dict[str, Any]] = [{}, {"token": "not-a-session"}, {"cookie": "not-a-session"}]
    async with client(ctx) as session:  # kept-alive connections, no cookie jar
        for op in await _ops(site):
            for creds in every_creds:
                status, body, _ = await call(site.env.url, ctx, op.method, op.path, {}, **creds, session=session)
                assert is_error(body) or (op.method, op.template) in PUBLIC, (op.method, op.path, body)
                if (op.method, op.template) in PUBLIC:
                    assert status != 401, (op.method, op.path, status, body)
                    allowed.add((op.method, op.template))
                else:
                    assert (status, body["code"]) == (401, "unauthorized"), (op.method, op.path, creds, status, body)
                    refused += 1
    assert allowed == PUBLIC
    assert refused >= 3 * 30


async def test_a_component_certificate_on_admin_routes_gets_403(site: Site) -> None:
    agent, _ = await site.agent()
    ps = await site.ps()
    checked = 0
    async with client(agent.ssl) as as_agent, client(ps.ssl) as as_ps:  # kept-alive connections
        for op in await _ops(site):
            roles = op.doc.get("x-roles")
            if not roles or set(roles) & {"agent", "ps"}:
                continue
            for member, session in ((agent, as_agent), (ps, as_ps)):
                status, body, _ = await call(site.env.url, member.ssl, op.method, op.path, {}, session=session)
                assert (status, body["code"]) == (403, "forbidden"), (member.role, op.method, op.path, body)
            checked += 1
    assert checked >= 15


async def test_errors_are_json(site: Site) -> None:
    admin = tls.client_context(site.env.admin_files)
    url = site.env.url
    status, body, _ = await call(url, admin, "GET", "/v1/no-such-route")
    assert (status, body["code"]) == (404, "not_found") and is_error(body)
    status, body, _ = await call(url, admin, "DELETE", "/v1/components")
    assert (status, body["code"]) == (405, "method_not_allowed") and is_error(body)
    status, body, _ = await call(url, admin, "POST", "/v1/operators", data=b"{not json")
    assert (status, body["code"]) == (400, "bad_request") and is_error(body)
    status, body, _ = await call(url, admin, "POST", "/v1/operators", data=b"[1, 2]")
    assert (status, body["code"]) == (400, "bad_request") and is_error(body)
    status, body, _ = await call(url, admin, "POST", "/v1/operators", data=b"{" + b" " * (2 << 20) + b"}")
    assert (status, body["code"]) == (413, "too_large") and is_error(body)
    status, body, _ = await call(url, admin, "GET", "/v1/components", params={"limit": "0"})
    assert (status, body["code"]) == (400, "bad_request") and is_error(body)
    status, body, _ = await call(url, anonymous(site.env), "POST", "/v1/login", data=b"{oops")
    assert status == 400 and is_error(body)
    status, body, _ = await call(url, anonymous(site.env), "GET", "/")
    assert status == 400 and is_error(body)
