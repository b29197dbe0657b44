"""Raw bytes over a TLS connection, for tests of what a server does with malformed requests."""

from __future__ import annotations

import re
import socket
import ssl

_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)\r\n", re.IGNORECASE)


def answered(out: bytes) -> bool:
    """Whether ``out`` holds one whole HTTP answer: its head and the Content-Length bytes after it."""
    end = out.find(b"\r\n\r\n")
    if end < 0:
        return False
    length = _LENGTH.search(out[:end + 2])
    return length is not None and len(out) - end - 4 >= int(length.group(1))


def raw_exchange(port: int, ctx: ssl.SSLContext, data: bytes, wait_s: float = 5.0, *,
                 until_answered: bool = False) -> bytes:
    """Send ``data`` on a new TLS connection to 127.0.0.1:``port``; everything received until
    the server closes it (or ``wait_s`` passes without a byte). ``until_answered``: stop as soon as
    one whole answer with a Content-Length is in (a server that lingers before closing, to read an
    unsent body, is not waited out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as plain:
        with ctx.wrap_socket(plain, server_hostname="127.0.0.1") as sock:
            sock.sendall(data)
            out = b""
            try:
                while chunk := sock.recv(65536):
                    out += chunk
                    if until_answered and answered(out):
                        break
            except (TimeoutError, ssl.SSLError, ConnectionResetError):
                pass
            return out
