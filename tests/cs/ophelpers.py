"""Helpers for the API-contract tests: the OpenAPI document's operations, requests with a session,
plausible path parameters, and a snapshot of every table to prove that nothing changed."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
from sqlalchemy import select

from cs.db.models import Base

ID = "ab" * 16
PUBLIC = {("GET", "/v1/ca"), ("POST", "/v1/register/challenge"), ("POST", "/v1/register"), ("POST", "/v1/login"),
          ("GET", "/v1/openapi.json")}  # the architecture's allow-list (§5 Identity), and this document


@dataclass(frozen=True)
class Op:
    method: str
    template: str
    doc: dict[str, Any]

    @property
    def path(self) -> str:
        """The path with plausible values: hex ids for ``*_id``, a name otherwise."""
        return re.sub(r"\{([^}]+)\}", lambda m: ID if m.group(1).endswith("_id") else "n1", self.template)


def operations(doc: dict[str, Any]) -> list[Op]:
    return [Op(method.upper(), path, op) for path, ops in sorted(doc["paths"].items()) for method, op in ops.items()]


def client(ctx: ssl.SSLContext) -> aiohttp.ClientSession:
    """A client session for many calls (:func:`call` with ``session=``): its connections are kept alive (no TLS
    handshake per call) and it keeps no cookie (each call sends only what it is given)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=aiohttp.DummyCookieJar())


async def call(url: str, ctx: ssl.SSLContext, method: str, path: str, body: Any = None, *,
               token: str | None = None, cookie: str | None = None, data: bytes | None = None,
               params: dict[str, Any] | None = None,
               session: aiohttp.ClientSession | None = None) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One request: (status, parsed JSON body, response); ``token`` as a bearer, ``cookie`` as the session cookie.
    ``session``: send it on that session's kept-alive connections (made with ``ctx``: many calls skip a
    TLS handshake each), else on a new session of its own."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if cookie:
        headers["Cookie"] = f"drlab_session={cookie}"
    kw: dict[str, Any] = {"data": data} if data is not None else {"json": body}
    if session is not None:
        async with session.request(method, url + path, headers=headers, params=params, **kw) as resp:
            return resp.status, await resp.json(content_type=None), resp
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as own:
        async with own.request(method, url + path, headers=headers, params=params, **kw) as resp:
            return resp.status, await resp.json(content_type=None), resp


async def snapshot(db: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order."""
    out = {}
    async with db.read() as session:
        for table in Base.metadata.sorted_tables:
            rows = (await session.execute(select(table))).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


def is_error(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("code"), str) and isinstance(body.get("message"), str)
