"""Fuzz of the threaded TLS front's HTTP head parser (common/frontproto.py): any bytes give a
Head or BadInput with a 4xx status, never another exception; what is accepted obeys the limits
and the rules of the module docstring (no control characters relayed, one decimal length)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.frontproto import BadInput, Limits, body_length, parse_head, relay_headers
from tests.fuzzing import fuzz, fuzz_seed, mutated  # noqa: F401

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("fuzz_seed")]

LIMITS = Limits(max_head_bytes=2048, max_headers=8, max_target_bytes=256)
GOOD = (b"PUT /v1/disks/ab/batches/1/2?x=1 HTTP/1.1\r\nHost: ps\r\nContent-Length: 12\r\n"
        b"Connection: keep-alive\r\nX-Drlab-Peer-Cert: forged")
tokens = st.sampled_from([b"GET", b"PUT", b"POST", b"get", b"", b" ", b"\t", b"/", b"/a b", b"HTTP/1.1",
                          b"HTTP/1.0", b"HTTP/2", b":", b"\r\n", b"\n", b"\r", b"\x00", b"\x7f", b"\xff",
                          b"Content-Length", b"content-length", b"Transfer-Encoding", b"chunked",
                          b"99999999999999999999", b"\xb2", b"-1", b"+5", b"\xd9\xa3", b"1_000", b"0x10", b"12"])
heads = st.one_of(st.binary(max_size=300), mutated(GOOD),
                  st.lists(tokens, max_size=40).map(b"".join),
                  st.lists(tokens, max_size=20).map(lambda ts: GOOD + b"\r\n" + b"".join(ts)))


@fuzz(400)
@given(heads)
def test_any_head_is_parsed_or_refused_with_a_4xx(raw: bytes) -> None:
    try:
        head = parse_head(raw, LIMITS)
        length = body_length(head)
    except BadInput as exc:
        assert 400 <= exc.status < 500 and exc.code and exc.message
        return
    assert len(raw) <= LIMITS.max_head_bytes and len(head.headers) <= LIMITS.max_headers
    assert head.target.startswith("/") and len(head.target) <= LIMITS.max_target_bytes
    assert 0 <= length < 10**18
    for name, value in relay_headers(head, None, length):
        assert name.lower() != "x-drlab-peer-cert"  # only the front vouches for a certificate
        assert not any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in name + value)


@pytest.mark.parametrize("count", [LIMITS.max_headers + 1, 100_000])
def test_a_flood_of_headers_is_refused(count: int) -> None:
    raw = b"GET / HTTP/1.1" + b"\r\nA: b" * count
    with pytest.raises(BadInput) as info:
        parse_head(raw, LIMITS)
    assert info.value.status == 400
