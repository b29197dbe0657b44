"""The CS's OpenAPI document: valid OpenAPI 3.1, exactly the router's /v1 routes, documented, and its
declared response schemas hold for what the routes really answer."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from aiohttp import web
from cshelpers import Site, anonymous
from openapi_spec_validator import validate
from ophelpers import PUBLIC, call, operations

from common import tls
from cs.api import openapi, spec


async def _doc(site: Site) -> dict[str, Any]:
    status, doc, resp = await call(site.env.url, anonymous(site.env), "GET", "/v1/openapi.json")
    assert status == 200 and resp.content_type == "application/json"
    return dict(doc)


async def test_document_is_valid_openapi(site: Site) -> None:
    doc = await _doc(site)
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert doc["openapi"].startswith("3.1")
    ids = [op.doc["operationId"] for op in operations(doc)]
    assert len(ids) == len(set(ids))


async def test_document_lists_exactly_the_routers_v1_routes(site: Site) -> None:
    doc = await _doc(site)
    app = site.env.service._runner.app  # the live application
    live = {(r.method, r.path) for r in openapi.routes(app)}
    raw = {(r.method, r.get_info().get("path") or r.get_info().get("formatter")) for r in app.router.routes()
           if r.method != "HEAD"}
    assert live == {(m, p) for m, p in raw if str(p).startswith("/v1")}
    assert {(op.method, op.template) for op in operations(doc)} == live
    assert len(live) >= 30


async def test_every_operation_is_documented_and_public_ones_are_the_allow_list(site: Site) -> None:
    doc = await _doc(site)
    public = set()
    for op in operations(doc):
        assert op.doc["summary"], f"{op.method} {op.template}: the handler needs a docstring"
        params = {p["name"] for p in op.doc["parameters"] if p["in"] == "path"}
        assert params == set(op.template.replace("}", "{").split("{")[1::2])
        if op.doc.get("security") == []:
            public.add((op.method, op.template))
        elif "x-roles" in op.doc:
            assert op.doc["x-roles"], op.template
    assert public == PUBLIC


async def test_declared_shapes_appear(site: Site) -> None:
    doc = await _doc(site)
    ops = {(op.method, op.template): op.doc for op in operations(doc)}
    login = ops[("POST", "/v1/login")]
    assert set(login["requestBody"]["content"]["application/json"]["schema"]["properties"]) == {"name", "password"}
    comps = ops[("GET", "/v1/components")]
    assert comps["x-roles"] == ["admin"]
    assert {p["name"] for p in comps["parameters"] if p["in"] == "query"} >= {"limit", "cursor"}
    assert ops[("POST", "/v1/operators")]["responses"]["201"]


def _response_schema(op: dict[str, Any]) -> dict[str, Any]:
    ok = next(v for k, v in op["responses"].items() if k.startswith("2"))
    return dict(ok["content"]["application/json"]["schema"])


async def test_answers_match_their_declared_schemas(site: Site) -> None:
    """Each admin GET without path parameters is called and its answer checked against its schema."""
    agent, _ = await site.agent("m1", {"disk0": 1 << 20})
    await site.ps()
    ctx = tls.client_context(site.env.admin_files)
    assert (await call(site.env.url, ctx, "PUT", "/v1/groups/g1", {"machines": [agent.component_id]}))[0] == 200
    doc = await _doc(site)
    checked = 0
    for op in operations(doc):
        if op.method != "GET" or "{" in op.template or op.doc.get("x-roles") is None:
            continue
        if not set(op.doc["x-roles"]) & {"admin"}:
            continue
        status, body, _ = await call(site.env.url, ctx, "GET", op.template)
        assert status == 200, (op.template, body)
        jsonschema.validate(body, _response_schema(op.doc))
        checked += 1
    assert checked >= 6


async def test_generator_keeps_undecorated_routes() -> None:
    async def undocumented(request: web.Request) -> web.Response:
        return web.json_response({})

    @spec.route(roles=spec.ADMIN, query={"x": spec.INT}, required_query=("x",))
    async def declared(request: web.Request) -> web.Response:
        """Declared.

        More words."""
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v1/a/{thing_id}", undocumented)
    app.router.add_post("/v1/b/{name:[a-z]+}", declared)
    app.router.add_get("/elsewhere", undocumented)
    doc = openapi.build(app)
    assert set(doc["paths"]) == {"/v1/a/{thing_id}", "/v1/b/{name}"}
    a = doc["paths"]["/v1/a/{thing_id}"]["get"]
    assert a["x-declared"] is False and a["summary"] == "" and a["parameters"][0]["schema"] == spec.HEX_ID
    b = doc["paths"]["/v1/b/{name}"]["post"]
    assert (b["summary"], b["description"], b["x-roles"]) == ("Declared.", "More words.", ["admin"])
    assert {"name": "x", "in": "query", "required": True, "schema": spec.INT} in b["parameters"]
    with pytest.raises(ValueError):
        spec.route()  # neither public nor any role: refused at import time
