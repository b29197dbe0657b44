"""A process server's upload proxy and bandwidth limit (cs/psconfig.py), for the admin:
``/v1/ps/{ps_id}/proxy`` and ``/v1/ps/{ps_id}/bandwidth`` (GET, PUT, DELETE). A change reaches the
PS in its settings document and applies at run time. The proxy password goes in, never out."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from common import bandwidth, http
from cs import psconfig, validate
from cs.api import spec
from cs.db.psuplink import PSUplink
from cs.state import state_of

WINDOW = spec.obj({"from": spec.STR, "to": spec.STR, "bytes_per_s": spec.INT}, extra=False)
PROXY = spec.obj({"ps_id": spec.HEX_ID, "url": spec.nullable(spec.STR), "username": spec.nullable(spec.STR),
                  "password_set": spec.BOOL})
SET_PROXY = spec.obj({"url": spec.STR, "username": spec.STR, "password": spec.STR}, required=("url",), extra=False)
BANDWIDTH = spec.obj({"ps_id": spec.HEX_ID, "bytes_per_s": spec.INT, "windows": spec.array(WINDOW)})
SET_BANDWIDTH = spec.obj({"bytes_per_s": spec.INT, "windows": spec.array(WINDOW)}, required=("bytes_per_s",),
                         extra=False)
TAGS = ("ps",)


def _ps_id(request: web.Request) -> str:
    return validate.hex_id(request.match_info["ps_id"], "ps_id")


async def _uplink(request: web.Request) -> tuple[str, PSUplink | None]:
    """The PS named in the path (404 if unknown) and its stored upload settings, if any."""
    ps_id = _ps_id(request)
    async with state_of(request).db.read() as session:
        await psconfig.ps_or_404(session, ps_id)
        return ps_id, await session.get(PSUplink, ps_id)


async def _store_proxy(request: web.Request, fields: Any) -> web.Response:
    """Set (``fields``) or clear (None) the proxy of the PS in the path; its view."""
    ps_id = _ps_id(request)
    state = state_of(request)
    async with state.change() as session:
        row = await psconfig.set_proxy(session, psconfig.store_key(state.cfg.data_dir), ps_id, fields)
        view = psconfig.proxy_view(ps_id, row)
    return web.json_response(view)


@spec.route(roles=spec.ADMIN, response=PROXY, tags=TAGS)
async def get_proxy(request: web.Request) -> web.Response:
    """The PS's upload proxy: url and username, and whether a password is set (never the password)."""
    return web.json_response(psconfig.proxy_view(*await _uplink(request)))


@spec.route(roles=spec.ADMIN, request=SET_PROXY, response=PROXY, tags=TAGS)
async def put_proxy(request: web.Request) -> web.Response:
    """Send the PS's uploads through an HTTP CONNECT proxy ``http://HOST:PORT`` (optionally with
    ``username`` and ``password``, Basic); replaces any earlier proxy of the PS."""
    http.require_role(request, "admin")
    _ps_id(request)  # a bad id is refused before the body is read
    return await _store_proxy(request, psconfig.parse_proxy(await http.read_json(request, max_bytes=8192)))


@spec.route(roles=spec.ADMIN, response=PROXY, tags=TAGS)
async def delete_proxy(request: web.Request) -> web.Response:
    """Uploads of the PS go direct again (or through its configured ``upload_proxy``)."""
    http.require_role(request, "admin")
    return await _store_proxy(request, None)


@spec.route(roles=spec.ADMIN, response=BANDWIDTH, tags=TAGS)
async def get_bandwidth(request: web.Request) -> web.Response:
    """The PS's upload limit (bytes/s, 0: none) and its time-of-day windows (PS local time)."""
    return web.json_response(psconfig.bandwidth_view(*await _uplink(request)))


@spec.route(roles=spec.ADMIN, request=SET_BANDWIDTH, response=BANDWIDTH, tags=TAGS)
async def put_bandwidth(request: web.Request) -> web.Response:
    """Limit the PS's uploads: ``bytes_per_s`` (0: none) outside the ``windows``
    (``[{from: "HH:MM", to: "HH:MM", bytes_per_s}]``, PS local time, first match wins)."""
    http.require_role(request, "admin")
    ps_id = _ps_id(request)
    plan = psconfig.parse_bandwidth(await http.read_json(request, max_bytes=16384))
    async with state_of(request).change() as session:
        row = await psconfig.set_bandwidth(session, ps_id, plan)
        view = psconfig.bandwidth_view(ps_id, row)
    return web.json_response(view)


@spec.route(roles=spec.ADMIN, response=BANDWIDTH, tags=TAGS)
async def delete_bandwidth(request: web.Request) -> web.Response:
    """No upload limit for the PS any more."""
    http.require_role(request, "admin")
    ps_id = _ps_id(request)
    async with state_of(request).change() as session:
        row = await psconfig.set_bandwidth(session, ps_id, bandwidth.Plan())
        view = psconfig.bandwidth_view(ps_id, row)
    return web.json_response(view)


def add_routes(app: web.Application) -> None:
    for path, get, put, delete in (("/v1/ps/{ps_id}/proxy", get_proxy, put_proxy, delete_proxy),
                                   ("/v1/ps/{ps_id}/bandwidth", get_bandwidth, put_bandwidth, delete_bandwidth)):
        app.router.add_get(path, get)
        app.router.add_put(path, put)
        app.router.add_delete(path, delete)
