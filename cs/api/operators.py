"""Operator logins and their management: ``POST /v1/login`` (public) opens a session, answered as an
HttpOnly Secure SameSite=Strict cookie and as a bearer token in the body; admins manage operators."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from sqlalchemy import select

from common import errors, http
from cs import operators
from cs.api import paging, spec
from cs.db.models_access import Operator
from cs.state import STATE, state_of

PUBLIC_PATHS = ("/v1/login",)
LIMITER = web.AppKey("login_limiter", operators.FailureLimiter)
OPERATOR = spec.obj({"name": spec.STR, "role": {"enum": list(operators.ROLES)}, "disabled": spec.BOOL,
                     "created_ns": spec.INT, "updated_ns": spec.INT, "kdf": spec.ANY_OBJ})
LOGIN = spec.obj({"name": spec.STR, "password": {"type": "string", "minLength": 1}}, extra=False)
SESSION = spec.obj({"token": spec.STR, "expires_ns": spec.INT, "name": spec.STR, "role": spec.STR})
NEW_OPERATOR = spec.obj({"name": spec.STR, "role": {"enum": list(operators.ROLES)},
                         "password": {"type": "string", "minLength": operators.MIN_PASSWORD}}, extra=False)
CHANGE = spec.obj({"role": {"enum": list(operators.ROLES)}, "disabled": spec.BOOL,
                   "password": {"type": "string", "minLength": operators.MIN_PASSWORD}}, required=(), extra=False)
WHOAMI = spec.obj({"name": spec.STR, "role": spec.STR, "via": {"enum": ["certificate", "session"]}})


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


@spec.route(public=True, request=LOGIN, response=SESSION, tags=("operators",))
async def post_login(request: web.Request) -> web.Response:
    """Log an operator in: a session token (cookie and body); 401 alike for any wrong name or password.

    Failed logins are limited per client address (429 with Retry-After beyond the burst)."""
    limiter = request.app[LIMITER]
    addr = _client(request)
    wait_s = limiter.retry_after(addr)
    if wait_s > 0:
        raise operators.TooManyAttempts("too many failed logins from this address", retry_after_s=wait_s)
    body = await http.read_json(request, max_bytes=8 * 1024)
    name, password = body.get("name"), body.get("password")
    if not isinstance(name, str) or not isinstance(password, str) or len(password) > operators.MAX_PASSWORD:
        raise errors.BadRequest("a login is {name, password}, both strings")
    state = state_of(request)
    op, stored = await operators.stored_hash(state, name)
    ok = await asyncio.to_thread(operators.check_password, password, stored)
    if op is None or not ok:
        limiter.failed(addr)
        raise errors.Unauthorized(operators.LOGIN_FAILED)
    limiter.succeeded(addr)
    token, expires_ns = await operators.open_session(state, op)
    resp = web.json_response({"token": token, "expires_ns": expires_ns, "name": op.name, "role": op.role})
    resp.set_cookie(http.SESSION_COOKIE, token, max_age=int(state.cfg.session_ttl_s), path="/v1", secure=True,
                    httponly=True, samesite="Strict")
    return resp


@spec.route(roles=("admin", "reader"), response=spec.OK, tags=("operators",))
async def post_logout(request: web.Request) -> web.Response:
    """End the caller's session (its token stops working) and clear the cookie."""
    http.require_role(request, "admin", "reader")
    token = http.session_token(request)
    if token is None or http.peer_identity(request) is not None:
        raise errors.BadRequest("this call is authenticated by a certificate, not a session")
    await operators.close_session(state_of(request), token)
    resp = web.json_response({"ok": True})
    resp.del_cookie(http.SESSION_COOKIE, path="/v1", secure=True, httponly=True, samesite="Strict")
    return resp


@spec.route(roles=("admin", "reader", *spec.COMPONENTS), response=WHOAMI, tags=("operators",))
async def get_whoami(request: web.Request) -> web.Response:
    """Who the caller is: name (or component id), role and how it authenticated."""
    ident = http.identity(request)
    via = "certificate" if http.peer_identity(request) is not None else "session"
    return web.json_response({"name": ident.component_id, "role": ident.role, "via": via})


@spec.route(roles=spec.ADMIN, query=spec.PAGE_QUERY, response=spec.page_of(OPERATOR), tags=("operators",))
async def get_operators(request: web.Request) -> web.Response:
    """Operators (never their password hashes), by name, a page at a time."""
    http.require_role(request, "admin")
    paging.check_query(request.query, paging.PAGE_PARAMS)
    page = paging.parse(request.query)
    async with state_of(request).db.read() as session:
        rows, nxt = await paging.fetch(session, select(Operator), [Operator.name], page)
    return web.json_response({"items": [operators.view(op) for op in rows], "next": nxt})


@spec.route(roles=spec.ADMIN, request=NEW_OPERATOR, response=OPERATOR, status=201, tags=("operators",))
async def post_operator(request: web.Request) -> web.Response:
    """Add an operator with a role and a password (hashed with scrypt, never stored as sent)."""
    http.require_role(request, "admin")
    body = await http.read_json(request, max_bytes=8 * 1024)
    name = operators.check_name(body.get("name"))
    role = operators.check_role(body.get("role"))
    password = operators.check_password_text(body.get("password"))
    stored = await asyncio.to_thread(operators.hash_password, password)
    return web.json_response(await operators.add(state_of(request), name, role, stored), status=201)


def _change(body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(body) - {"role", "disabled", "password"})
    if unknown or not body:
        raise errors.BadRequest("a change names role, disabled and/or password, nothing else")
    disabled = body.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise errors.BadRequest("disabled must be true or false")
    return {"role": operators.check_role(body["role"]) if "role" in body else None, "disabled": disabled,
            "password": operators.check_password_text(body["password"]) if "password" in body else None}


@spec.route(roles=spec.ADMIN, request=CHANGE, response=OPERATOR, tags=("operators",))
async def put_operator(request: web.Request) -> web.Response:
    """Change an operator's role, disabled flag or password; its sessions end."""
    http.require_role(request, "admin")
    name = operators.check_name(request.match_info["name"])
    change = _change(await http.read_json(request, max_bytes=8 * 1024))
    stored = None
    if change["password"] is not None:
        stored = await asyncio.to_thread(operators.hash_password, change["password"])
    return web.json_response(await operators.update(state_of(request), name, role=change["role"],
                                                    disabled=change["disabled"], stored=stored))


@spec.route(roles=spec.ADMIN, response=spec.OK, tags=("operators",))
async def delete_operator(request: web.Request) -> web.Response:
    """Remove an operator; its sessions end."""
    http.require_role(request, "admin")
    await operators.remove(state_of(request), operators.check_name(request.match_info["name"]))
    return web.json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    cfg = app[STATE].cfg
    app[LIMITER] = operators.FailureLimiter(cfg.login_fail_burst, cfg.login_fail_interval_s)
    app.router.add_post("/v1/login", post_login)
    app.router.add_post("/v1/logout", post_logout)
    app.router.add_get("/v1/whoami", get_whoami)
    app.router.add_get("/v1/operators", get_operators)
    app.router.add_post("/v1/operators", post_operator)
    app.router.add_put("/v1/operators/{name}", put_operator)
    app.router.add_delete("/v1/operators/{name}", delete_operator)
