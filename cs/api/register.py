"""Registration and certificates: the CA and registration (reachable without a client
certificate), renewal by a registered component, revocation by an admin."""

from __future__ import annotations

from aiohttp import web

from common import http
from cs import registration, revocation, validate
from cs.api import spec
from cs.state import state_of

PUBLIC_PATHS = ("/v1/ca", "/v1/register/challenge", "/v1/register")

CERT_REPLY = spec.obj({"component_id": spec.HEX_ID, "cert_pem": spec.STR, "ca_pem": spec.STR})


@spec.route(public=True, response=spec.obj({"ca_pem": spec.STR}), tags=("registration",))
async def get_ca(request: web.Request) -> web.Response:
    """The CA certificate (PEM) that signs every component certificate."""
    return web.json_response({"ca_pem": state_of(request).ca.cert_pem.decode()})


@spec.route(public=True, request=spec.obj({"role": spec.STR, "host_id": spec.STR, "enroll_token_id": spec.HEX_ID},
                                          required=("role", "host_id")),
            response=spec.obj({"challenge_id": spec.HEX_ID, "server_nonce": spec.STR, "salt": spec.STR,
                               "kdf": spec.ANY_OBJ}), tags=("registration",))
async def post_challenge(request: web.Request) -> web.Response:
    """A single-use registration challenge (server nonce, salt and scrypt parameters). With
    ``enroll_token_id`` (agents only) the registration proves the token's key instead."""
    body = await http.read_json(request)
    role, host_id = registration.parse_challenge(body)
    token_id = registration.parse_challenge_token(body, role)
    return web.json_response(await registration.new_challenge(state_of(request), role, host_id, token_id))


@spec.route(public=True, status=201, response=spec.obj({"component_id": spec.HEX_ID, "cert_pem": spec.STR,
                                                        "ca_pem": spec.STR, "server_proof": spec.STR}),
            tags=("registration",))
async def post_register(request: web.Request) -> web.Response:
    """Register a component by passphrase proof; returns its certificate and the CS's proof."""
    req = registration.parse_register(await http.read_json(request, max_bytes=64 * 1024))
    return web.json_response(await registration.register(state_of(request), req), status=201)


@spec.route(roles=spec.COMPONENTS, request=spec.obj({"csr_pem": spec.STR, "version": spec.STR}, required=("csr_pem",)),
            response=CERT_REPLY, tags=("registration",))
async def post_renew(request: web.Request) -> web.Response:
    """Renew the caller's certificate: a new CSR under the current certificate, same component id.
    An optional ``version`` (what the caller runs now) newer than the CS is refused (409)."""
    ident = http.require_role(request, *spec.COMPONENTS)
    body = await http.read_json(request, max_bytes=64 * 1024)
    csr_pem, version = registration.parse_renew(body), registration.parse_renew_version(body)
    return web.json_response(await registration.renew(state_of(request), ident, csr_pem, version))


@spec.route(roles=spec.ADMIN, response=spec.obj({"component_id": spec.HEX_ID, "revoked": spec.array(spec.STR)}),
            tags=("registration",))
async def post_revoke(request: web.Request) -> web.Response:
    """Revoke every certificate of a component: refused by the CS at once, by PS and MT through
    their settings; it may come back only by registering again with the passphrase."""
    http.require_role(request, "admin")
    component_id = validate.hex_id(request.match_info["component_id"], "component_id")
    serials = await revocation.revoke_component(state_of(request), component_id)
    await revocation.refused_of(request).refresh(state_of(request).db)
    return web.json_response({"component_id": component_id, "revoked": serials})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/ca", get_ca)
    app.router.add_post("/v1/register/challenge", post_challenge)
    app.router.add_post("/v1/register", post_register)
    app.router.add_post("/v1/certificate/renew", post_renew)
    app.router.add_post("/v1/components/{component_id}/revoke", post_revoke)
