"""A small, real HTTP CONNECT proxy on loopback for the PS's upload tests: it parses ``CONNECT
host:port``, checks ``Proxy-Authorization: Basic`` when it has credentials (407 otherwise), then
pipes bytes both ways, counting the tunnels it opened and the bytes sent up them."""

from __future__ import annotations

import asyncio
import base64
import contextlib


class ConnectProxy:
    def __init__(self, username: str = "", password: str = "") -> None:
        self.credentials = (username, password)
        self.tunnels = 0
        self.refused = 0
        self.bytes_up = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def _authorized(self, headers: dict[str, str]) -> bool:
        user, password = self.credentials
        if not user:
            return True
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return headers.get("proxy-authorization") == expected

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._tunnel(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        if not self._authorized(headers):
            self.refused += 1
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=\"drlab\"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        self.tunnels += 1
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        try:
            await asyncio.gather(self._pipe(reader, up_writer, count=True), self._pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool = False) -> None:
        try:
            while chunk := await src.read(65536):
                if count:
                    self.bytes_up += len(chunk)
                dst.write(chunk)
                await dst.drain()
        finally:
            with contextlib.suppress(Exception):
                dst.write_eof()
