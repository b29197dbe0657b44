"""Routes reachable without a client certificate: the CA and registration."""

from __future__ import annotations

from aiohttp import web

from common import http
from cs import registration
from cs.state import state_of

PUBLIC_PATHS = ("/v1/ca", "/v1/register/challenge", "/v1/register")


async def get_ca(request: web.Request) -> web.Response:
    return web.json_response({"ca_pem": state_of(request).ca.cert_pem.decode()})


async def post_challenge(request: web.Request) -> web.Response:
    role, host_id = registration.parse_challenge(await http.read_json(request))
    return web.json_response(await registration.new_challenge(state_of(request), role, host_id))


async def post_register(request: web.Request) -> web.Response:
    req = registration.parse_register(await http.read_json(request, max_bytes=64 * 1024))
    return web.json_response(await registration.register(state_of(request), req), status=201)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/ca", get_ca)
    app.router.add_post("/v1/register/challenge", post_challenge)
    app.router.add_post("/v1/register", post_register)
