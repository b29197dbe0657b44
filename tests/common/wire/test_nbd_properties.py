"""Fuzz of the NBD parsers (hypothesis): arbitrary bytes give a value or NbdProtocolError, never
another exception, and nothing they return lets the server read or allocate past its caps."""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from common.wire import nbd as wn  # noqa: E402

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_PAYLOAD = 1 << 20
SKIP_MAX = 4 << 20

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def request_headers(draw: st.DrawFn) -> bytes:
    """Mostly well-framed headers with hostile fields, sometimes raw garbage."""
    if draw(st.booleans()):
        return draw(st.binary(min_size=0, max_size=40))
    magic = draw(st.one_of(st.just(wn.REQUEST_MAGIC), u32))
    return wn.REQUEST.pack(magic, draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 10)), draw(u64),
                           draw(st.one_of(u64, st.integers(0, 2**30))), draw(u32))


@SETTINGS
@given(request_headers(), st.integers(1, 2**50))
def test_request_parser_and_check_never_exceed_caps(raw: bytes, size: int) -> None:
    try:
        req = wn.decode_request(raw)
    except wn.NbdProtocolError:
        return
    v = wn.check_request(req, size, MAX_PAYLOAD, SKIP_MAX)
    assert 0 <= v.skip <= SKIP_MAX
    if v.error == wn.Errno.OK:
        assert req.cmd in set(wn.Cmd)
        assert req.offset + req.length <= size or req.cmd in (wn.Cmd.FLUSH, wn.Cmd.DISC)
        assert req.payload_bytes <= MAX_PAYLOAD  # the only bytes the server then reads
        if req.cmd in (wn.Cmd.READ, wn.Cmd.WRITE):
            assert req.length <= MAX_PAYLOAD  # the only bytes it then allocates for a reply
    else:
        assert v.skip in (0, req.payload_bytes)
        assert v.close == (req.payload_bytes > SKIP_MAX)  # hang up only when the payload cannot be dropped


@SETTINGS
@given(st.one_of(st.binary(max_size=24), st.builds(lambda o, n: wn.OPTION.pack(wn.IHAVEOPT, o, n), u32, u32)))
def test_option_header_parser(raw: bytes) -> None:
    try:
        header = wn.decode_option_header(raw)
    except wn.NbdProtocolError:
        return
    assert header.too_big == (header.length > wn.MAX_OPTION_BYTES)


@st.composite
def info_data(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    name = draw(st.binary(max_size=40))
    count = draw(st.integers(0, 100))
    body = wn.U32.pack(draw(st.one_of(st.just(len(name)), u32))) + name + wn.U16.pack(count)
    return body + draw(st.binary(min_size=0, max_size=2 * count + 2))


@SETTINGS
@given(info_data())
def test_info_request_parser(data: bytes) -> None:
    try:
        req = wn.decode_info_request(data)
    except wn.NbdProtocolError:
        return
    assert len(req.name.encode()) <= wn.MAX_NAME_BYTES and "\0" not in req.name
    assert len(req.infos) <= wn.MAX_INFO_REQUESTS
    assert data == wn.encode_info_request(req.name, req.infos)  # exactly what was sent, nothing left over


@SETTINGS
@given(st.binary(max_size=8))
def test_client_flags_parser(data: bytes) -> None:
    try:
        flags = wn.decode_client_flags(data)
    except wn.NbdProtocolError:
        return
    assert int(flags) in range(4)
