"""The CS's OpenAPI 3.1 document, built from the aiohttp router when the app starts, served (public)
at ``GET /v1/openapi.json``.

Every ``/v1`` route appears with its method, its path parameters, the first line of its handler's
docstring as summary (the rest as description) and, when the handler declares them with
cs/api/spec.py, the roles allowed (``x-roles``), query parameters and request/response schemas.
Errors are JSON ``{code, message}`` everywhere.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cs.api import spec

PUBLIC_PATHS = ("/v1/openapi.json",)
PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
SKIP_METHODS = ("HEAD", "*")
ERROR = {"$ref": "#/components/schemas/Error"}
CREDENTIALS: list[dict[str, list[str]]] = [{"clientCertificate": []}, {"sessionToken": []}, {"sessionCookie": []}]


@dataclass
class _Doc:
    body: bytes = b""
    document: dict[str, Any] = field(default_factory=dict)


DOC = web.AppKey("openapi_document", _Doc)


@dataclass(frozen=True)
class Route:
    """One operation of the router: method, OpenAPI path template, handler."""

    method: str
    path: str
    handler: Any


def routes(app: web.Application) -> list[Route]:
    """The router's ``/v1`` operations (HEAD, added beside every GET, left out)."""
    out = []
    for r in app.router.routes():
        info = r.get_info()
        path = info.get("path") or info.get("formatter")
        if r.method in SKIP_METHODS or not isinstance(path, str) or not path.startswith("/v1"):
            continue
        out.append(Route(r.method, PARAM.sub(lambda m: "{" + m.group(1) + "}", path), r.handler))
    return out


def _texts(handler: Any) -> tuple[str, str]:
    doc = inspect.getdoc(handler) or ""
    summary, _, rest = doc.partition("\n")
    return summary.strip(), rest.strip()


def _json(schema: spec.Schema | None) -> dict[str, Any]:
    return {"application/json": {"schema": schema if schema is not None else {"type": "object"}}}


def _parameters(route: Route, declared: spec.RouteSpec | None) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": spec.HEX_ID if name.endswith("_id") else {"type": "string"}}
        for name in PARAM.findall(route.path)
    ]
    if declared is not None:
        params += [{"name": name, "in": "query", "required": name in declared.required_query, "schema": schema}
                   for name, schema in declared.query.items()]
    return params


def operation(route: Route) -> dict[str, Any]:
    declared = spec.spec_of(route.handler)
    summary, description = _texts(route.handler)
    op: dict[str, Any] = {
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{route.method.lower()} {route.path}").strip("_"),
        "summary": summary,
        "parameters": _parameters(route, declared),
        "responses": {"default": {"description": "an error", "content": _json(ERROR)}},
    }
    if description:
        op["description"] = description
    if declared is None:
        op["x-declared"] = False
        op["responses"]["200"] = {"description": "success", "content": _json(None)}
        return op
    op["security"] = [] if declared.public else CREDENTIALS
    op["x-roles"] = list(declared.roles)
    if declared.tags:
        op["tags"] = list(declared.tags)
    if declared.request is not None:
        op["requestBody"] = {"required": True, "content": _json(declared.request)}
    op["responses"][str(declared.status)] = {"description": "success", "content": _json(declared.response)}
    return op


def _version() -> str:
    try:
        return importlib.metadata.version("drlab")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def build(app: web.Application, *, version: str | None = None) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in sorted(routes(app), key=lambda r: (r.path, r.method)):
        paths.setdefault(route.path, {})[route.method.lower()] = operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "drlab configuration server", "version": version or _version(),
                 "description": "Deny by default: every route needs a client certificate or an operator "
                                "session, except those whose security is empty. x-roles names the roles a "
                                "route admits; a reader (read-only operator) may also GET what an admin may. "
                                "Lists take limit and cursor and answer {items, next}. Errors are "
                                "{code, message}."},
        "paths": paths,
        "security": CREDENTIALS,
        "components": {
            "schemas": {"Error": spec.obj({"code": spec.STR, "message": spec.STR})},
            "securitySchemes": {
                "clientCertificate": {"type": "mutualTLS", "description": "a certificate issued by the CS's CA"},
                "sessionToken": {"type": "http", "scheme": "bearer", "description": "POST /v1/login's token"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "drlab_session"},
            },
        },
    }


@spec.route(public=True, response={"type": "object"}, tags=("meta",))
async def get_openapi(request: web.Request) -> web.Response:
    """This API described as an OpenAPI 3.1 document (generated from the router at startup)."""
    return web.Response(body=request.app[DOC].body, content_type="application/json")


async def _freeze(app: web.Application) -> None:
    doc = app[DOC]
    doc.document = build(app)
    doc.body = json.dumps(doc.document, indent=1).encode()


def add_routes(app: web.Application) -> None:
    app[DOC] = _Doc()
    app.router.add_get("/v1/openapi.json", get_openapi)
    app.on_startup.append(_freeze)
