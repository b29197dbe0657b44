"""common/http.py: JSON bodies are read whole, however they arrive, and bounded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from common import http

LIMIT = 1024 * 1024


async def echo(request: web.Request) -> web.Response:
    body = await http.read_json(request, LIMIT)
    return web.json_response({"keys": len(body["items"])})


async def trickle(data: bytes, piece: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i:i + piece]
        await asyncio.sleep(0.001)


async def post(server: TestServer, data: bytes) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(server.make_url("/echo"), data=trickle(data, 16 * 1024)) as resp:
            return resp.status, await resp.json()


async def test_a_json_body_arriving_in_pieces_is_read_whole_and_a_too_large_one_refused() -> None:
    app = http.make_app(allow=["/echo"], client_max_size=4 * LIMIT)
    app.router.add_post("/echo", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        body = json.dumps({"items": [f"item-{i:06d}" for i in range(60_000)]}).encode()
        assert 600_000 < len(body) < LIMIT
        assert await post(server, body) == (200, {"keys": 60_000})
        status, error = await post(server, b" " * (LIMIT + 1))
        assert status == 413 and isinstance(error.get("code"), str) and error.get("message")
    finally:
        await server.close()
