"""Raw bytes over a TLS connection, for tests of what a server does with malformed requests."""

from __future__ import annotations

import socket
import ssl


def raw_exchange(port: int, ctx: ssl.SSLContext, data: bytes, wait_s: float = 5.0) -> bytes:
    """Send ``data`` on a new TLS connection to 127.0.0.1:``port``; everything received until
    the server closes it (or ``wait_s`` passes without a byte)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as plain:
        with ctx.wrap_socket(plain, server_hostname="127.0.0.1") as sock:
            sock.sendall(data)
            out = b""
            try:
                while chunk := sock.recv(65536):
                    out += chunk
            except (TimeoutError, ssl.SSLError, ConnectionResetError):
                pass
            return out
