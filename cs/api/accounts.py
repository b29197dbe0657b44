"""The push-install account store for the admin: ``/v1/accounts``. Passwords go in, never out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from common import http
from cs import accounts, model
from cs.api import paging, spec
from cs.db.models_access import Account
from cs.state import state_of

ACCOUNT = spec.obj({"name": spec.STR, "username": spec.STR, "created_ns": spec.INT, "updated_ns": spec.INT})
NEW_ACCOUNT = spec.obj({"name": spec.STR, "username": spec.STR, "password": spec.STR}, extra=False)
CHANGE_ACCOUNT = spec.obj({"username": spec.STR, "password": spec.STR}, required=(), extra=False)
_KEYS: dict[Path, accounts.StoreKey] = {}


def _key(request: web.Request) -> accounts.StoreKey:
    data_dir = state_of(request).cfg.data_dir
    if data_dir not in _KEYS:
        _KEYS[data_dir] = accounts.load_key(data_dir)
    return _KEYS[data_dir]


def _name(request: web.Request) -> str:
    return model.name(request.match_info["name"], "account")


@spec.route(roles=spec.ADMIN, query=spec.PAGE_QUERY, response=spec.page_of(ACCOUNT), tags=("accounts",))
async def get_accounts(request: web.Request) -> web.Response:
    """Accounts by name (name and username only), a page at a time."""
    async def view(_: AsyncSession, a: Account) -> dict[str, Any]:
        return accounts.view(a)

    return await paging.named_page(request, Account, view)


@spec.route(roles=spec.ADMIN, request=NEW_ACCOUNT, response=ACCOUNT, status=201, tags=("accounts",))
async def post_account(request: web.Request) -> web.Response:
    """Store push-install credentials; the password is encrypted at rest and never returned."""
    http.require_role(request, "admin")
    fields = accounts.parse(await http.read_json(request, max_bytes=8192), create=True)
    key = _key(request)
    async with state_of(request).db.write() as session:
        account = await accounts.create(session, key, fields)
    return web.json_response(accounts.view(account), status=201)


@spec.route(roles=spec.ADMIN, response=ACCOUNT, tags=("accounts",))
async def get_account(request: web.Request) -> web.Response:
    """One account: name and username."""
    http.require_role(request, "admin")
    async with state_of(request).db.read() as session:
        account = await model.get_or_404(session, Account, _name(request), "account")
    return web.json_response(accounts.view(account))


@spec.route(roles=spec.ADMIN, request=CHANGE_ACCOUNT, response=ACCOUNT, tags=("accounts",))
async def patch_account(request: web.Request) -> web.Response:
    """Change an account's username and/or password."""
    http.require_role(request, "admin")
    name = _name(request)
    fields = accounts.parse(await http.read_json(request, max_bytes=8192), create=False)
    key = _key(request)
    async with state_of(request).db.write() as session:
        account = await accounts.update(session, key, name, fields)
    return web.json_response(accounts.view(account))


@spec.route(roles=spec.ADMIN, response=spec.OK, tags=("accounts",))
async def delete_account(request: web.Request) -> web.Response:
    """Delete an account."""
    http.require_role(request, "admin")
    async with state_of(request).db.write() as session:
        await accounts.delete(session, _name(request))
    return web.json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/accounts", get_accounts)
    app.router.add_post("/v1/accounts", post_account)
    app.router.add_get("/v1/accounts/{name}", get_account)
    app.router.add_patch("/v1/accounts/{name}", patch_account)
    app.router.add_delete("/v1/accounts/{name}", delete_account)
