"""The pure HTTP/1.1 rules of the threaded TLS front (common/frontproto.py)."""

from __future__ import annotations

import json

import pytest

from common import errors
from common.frontproto import (
    PEER_CERT_HEADER,
    BadInput,
    Limits,
    answer_headers,
    body_length,
    error_answer,
    parse_head,
    relay_headers,
    render,
)

LIMITS = Limits(max_head_bytes=1024, max_headers=4, max_target_bytes=64)


def head(text: str):  # type: ignore[no-untyped-def]
    return parse_head(text.replace("\n", "\r\n").encode("latin-1"), LIMITS)


def test_a_good_head_is_parsed() -> None:
    h = head("PUT /v1/disks/ab/batches/1/2?x=1 HTTP/1.1\nHost: ps\nContent-Length:  12 ")
    assert (h.method, h.target, h.path, h.version) == ("PUT", "/v1/disks/ab/batches/1/2?x=1",
                                                       "/v1/disks/ab/batches/1/2", "HTTP/1.1")
    assert h.get("content-length") == "12" and h.get("HOST") == "ps" and h.get("absent") is None
    assert body_length(h) == 12 and h.keep_alive


@pytest.mark.parametrize("text", [
    "GET /\n",                                 # two parts
    "GET  / HTTP/1.1",                         # empty part
    "get / HTTP/1.1",                          # lower-case method
    "GET / HTTP/2.0",                          # version
    "GET http://x/ HTTP/1.1",                  # absolute form
    "GET /a b HTTP/1.1",                       # space in the target
    "GET /\x01 HTTP/1.1",                      # control character
    "GET /" + "a" * 64 + " HTTP/1.1",          # target too long
    "GET / HTTP/1.1\nNo-Colon",                # header without a colon
    "GET / HTTP/1.1\nBad Name: x",             # not a token
    "GET / HTTP/1.1\nA: 1\n folded",           # obsolete folding
    "GET / HTTP/1.1\nA: \x7f",                 # control character in a value
    "GET / HTTP/1.1\nA: 1\nB: 2\nC: 3\nD: 4\nE: 5",  # too many headers
    "GET / HTTP/1.1\nA: " + "x" * 1100,        # head too large
])
def test_bad_heads_are_400(text: str) -> None:
    with pytest.raises(BadInput) as caught:
        head(text)
    assert caught.value.status == 400 and caught.value.code == "bad_request"


@pytest.mark.parametrize("text, status", [
    ("PUT /x HTTP/1.1", 411),
    ("POST /x HTTP/1.1\nTransfer-Encoding: chunked", 411),
    ("PUT /x HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length: 3", 400),
    ("PUT /x HTTP/1.1\nContent-Length: 3\nContent-Length: 4", 400),
    ("PUT /x HTTP/1.1\nContent-Length: -3", 400),
    ("PUT /x HTTP/1.1\nContent-Length: 0x10", 400),
    ("PUT /x HTTP/1.1\nContent-Length: " + "9" * 19, 400),
])
def test_body_rules(text: str, status: int) -> None:
    with pytest.raises(BadInput) as caught:
        body_length(head(text))
    assert caught.value.status == status


def test_lengths_that_are_fine() -> None:
    assert body_length(head("GET /x HTTP/1.1")) == 0
    assert body_length(head("PUT /x HTTP/1.1\nContent-Length: 5\ncontent-length: 5")) == 5


def test_keep_alive_rules() -> None:
    assert head("GET / HTTP/1.1").keep_alive
    assert not head("GET / HTTP/1.1\nConnection: Close").keep_alive
    assert not head("GET / HTTP/1.0").keep_alive
    assert head("GET / HTTP/1.0\nConnection: keep-alive").keep_alive


def test_relayed_headers_drop_a_client_peer_cert_header_and_hop_by_hop_ones() -> None:
    h = head("PUT /x HTTP/1.1\nHost: ps\nx-drlab-peer-cert: forged\nX-DRLAB-PEER-CERT: forged2\n"
             "Connection: keep-alive")
    assert relay_headers(h, None, 3) == [("Host", "ps"), ("Content-Length", "3")]
    assert relay_headers(h, "real", 0) == [("Host", "ps"), (PEER_CERT_HEADER, "real"), ("Content-Length", "0")]
    assert answer_headers([("Content-Type", "a"), ("Transfer-Encoding", "chunked"), ("Connection", "close"),
                           ("Content-Length", "9")]) == [("Content-Type", "a")]


def test_answers() -> None:
    out = render(200, b"abc", [("X-A", "1")], True)
    assert out == b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc"
    assert render(200, b"abc", [], False, head_only=True).endswith(b"Connection: close\r\n\r\n")
    out = error_answer(errors.Throttled("full", retry_after_s=0.2), True)
    head_part, body = out.split(b"\r\n\r\n", 1)
    assert head_part.startswith(b"HTTP/1.1 507 Insufficient Storage") and b"Retry-After: 1" in head_part
    assert json.loads(body) == {"code": "throttled", "message": "full"}
    out = error_answer(BadInput(411, "length_required", "no"), False)
    assert out.startswith(b"HTTP/1.1 411 ") and json.loads(out.split(b"\r\n\r\n", 1)[1])["code"] == "length_required"


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nX-A\n: v",                               # a bare LF ending a header name
    b"GET / HTTP/1.1\r\nFoo\nX-Drlab-Peer-Cert: forged",         # a header smuggled into a name
    b"GET /x\n HTTP/1.1",                                        # ... ending the target
    b"GET\n / HTTP/1.1",                                         # ... ending the method
])
def test_a_bare_line_feed_anywhere_in_the_head_is_400(raw: bytes) -> None:
    """Found by the fuzz test (DRLAB_SEED=32): a pattern ending in ``$`` also matched before a final
    newline, so a header name could end in LF and be relayed to the daemon's app as two lines."""
    with pytest.raises(BadInput) as caught:
        parse_head(raw, LIMITS)
    assert caught.value.status == 400
