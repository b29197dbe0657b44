"""The pure HTTP/1.1 part of the threaded TLS front (common/tlsfront.py): parsing a request head
with strict limits, the rules for bodies, the headers relayed, and rendering answers.

Rules (every refusal is a JSON ``{code, message}`` answer and the connection is closed):

- The head (request line and headers) is at most ``Limits.max_head_bytes`` bytes, with at most
  ``Limits.max_headers`` headers (400 beyond either).
- Request line ``METHOD SP origin-form-target SP HTTP/1.x``: the method is 1-16 upper-case
  letters, the target starts with ``/`` and holds only visible ASCII (400 otherwise).
- Header names are RFC 9110 tokens; values have no control characters; no obsolete line
  folding; ``Content-Length`` is decimal (repeated only with one value) (400 otherwise).
- Bodies only with ``Content-Length``: ``Transfer-Encoding`` with it is 400 (request
  smuggling), without it 411, as is a PUT/POST/PATCH without either.
- Keep-alive: HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from common import errors

PEER_CERT_HEADER = "X-Drlab-Peer-Cert"  # the verified peer certificate, front -> app only (common/http.py)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authorization", "proxy-authenticate", "content-length"})
BODY_METHODS = frozenset({"PUT", "POST", "PATCH"})
_METHOD = re.compile(rb"^[A-Z]{1,16}\Z")
_TARGET = re.compile(rb"^/[\x21-\x7e]*\Z")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class Limits:
    """Bounds of the front: sizes in bytes, times in seconds, rates in bytes/s."""
    max_head_bytes: int = 16 * 1024
    max_headers: int = 64
    max_target_bytes: int = 8 * 1024
    max_connections: int = 64  # connection threads; beyond: 503 and close
    handshake_timeout_s: float = 15.0
    idle_timeout_s: float = 75.0  # a keep-alive connection without a new request is closed
    head_timeout_s: float = 30.0  # from the first byte of a request to the end of its head
    io_timeout_s: float = 30.0  # the longest wait for any one read or write
    min_body_rate: int = 256 * 1024  # a body may take io_timeout_s + length / min_body_rate seconds
    relay_max_bytes: int = 64 * 1024 * 1024  # bodies relayed to the app


class BadInput(Exception):
    """A request the front refuses before any handler sees it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Head:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]  # as received (names as sent)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def get(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for k, v in self.headers if k.lower() == "connection" for t in v.split(",")}
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens and "close" not in tokens


def bad(message: str) -> BadInput:
    return BadInput(400, "bad_request", message)


def parse_head(raw: bytes, limits: Limits) -> Head:
    """Parse a request head (without its final empty line) under ``limits``; :class:`BadInput`."""
    if len(raw) > limits.max_head_bytes:
        raise bad(f"request head larger than {limits.max_head_bytes} bytes")
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise bad("malformed request line")
    method, target, version = parts
    if not _METHOD.match(method) or version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise bad("malformed request line")
    if len(target) > limits.max_target_bytes or not _TARGET.match(target):
        raise bad("malformed request target")
    if len(lines) - 1 > limits.max_headers:
        raise bad(f"more than {limits.max_headers} headers")
    headers = tuple(_header(line) for line in lines[1:])
    return Head(method.decode(), target.decode(), version.decode(), headers)


def _header(line: bytes) -> tuple[str, str]:
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.match(name):  # also a folded line (starting with SP/HTAB) or an empty name
        raise bad("malformed header line")
    value = value.strip(b" \t")
    if _BAD_VALUE.search(value):
        raise bad(f"control character in header {name.decode()[:64]}")
    return name.decode(), value.decode("latin-1")


def body_length(head: Head) -> int:
    """The body's length by the rules above (0 for a GET without one); :class:`BadInput`."""
    lengths = {v for k, v in head.headers if k.lower() == "content-length"}
    chunked = head.get("transfer-encoding") is not None
    if lengths and chunked:
        raise bad("Content-Length and Transfer-Encoding together")
    if chunked or (not lengths and head.method in BODY_METHODS):
        raise BadInput(411, "length_required", "a request body needs a Content-Length")
    if not lengths:
        return 0
    if len(lengths) > 1:
        raise bad("conflicting Content-Length headers")
    text = lengths.pop()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise bad("Content-Length is not a decimal length")
    return int(text)


def relay_headers(head: Head, peer_cert: str | None, length: int) -> list[tuple[str, str]]:
    """The headers the app gets: the client's, minus hop-by-hop ones and any peer-certificate header
    the client sent (only the front vouches for a certificate), plus the verified one and the length."""
    out = [(k, v) for k, v in head.headers
           if k.lower() not in HOP_BY_HOP and k.lower() != PEER_CERT_HEADER.lower()]
    if peer_cert is not None:
        out.append((PEER_CERT_HEADER, peer_cert))
    if length or head.method in BODY_METHODS:
        out.append(("Content-Length", str(length)))
    return out


def answer_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The app's answer headers relayed to the client (hop-by-hop ones and the length are the front's)."""
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]


def render(status: int, body: bytes, headers: list[tuple[str, str]], keep_alive: bool,
           head_only: bool = False) -> bytes:
    """An HTTP/1.1 answer head (and body, unless ``head_only``) with Content-Length and Connection."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    lines += [f"Content-Length: {len(body)}", f"Connection: {'keep-alive' if keep_alive else 'close'}"]
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return out if head_only else out + body


def json_answer(status: int, document: Any, keep_alive: bool,
                extra: list[tuple[str, str]] | None = None) -> bytes:
    body = json.dumps(document).encode()
    return render(status, body, [("Content-Type", "application/json; charset=utf-8"), *(extra or [])], keep_alive)


def error_answer(exc: errors.DrlabError | BadInput, keep_alive: bool) -> bytes:
    """The same JSON and status as common/http.py's error_middleware (Retry-After in whole seconds)."""
    if isinstance(exc, BadInput):
        return json_answer(exc.status, {"code": exc.code, "message": exc.message}, keep_alive)
    extra = []
    if exc.retry_after_s is not None:
        extra.append(("Retry-After", str(max(1, int(round(exc.retry_after_s))))))
    return json_answer(exc.status, exc.to_json(), keep_alive, extra)
