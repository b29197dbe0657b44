"""Fuzz of the local block protocol (common/wire/blockio.py): hostile headers and INFO payloads
give a value or BlockProtocolError, never another exception, and no accepted header makes the
agent (agent/blockserver.py) or the workload (agent/blockclient.py) read more than MAX_LENGTH."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.wire import blockio as bio
from tests.fuzzing import fuzz, fuzz_seed, mutated  # noqa: F401

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("fuzz_seed")]

u64 = st.integers(0, 2**64 - 1)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    op = draw(st.sampled_from(bio.Op))
    length = draw(st.integers(1, 4096)) if op == bio.Op.WRITE else (draw(st.integers(0, 4096)) if op == bio.Op.READ
                                                                      else 0)
    head = bio.REQUEST.pack(bio.MAGIC_REQUEST, int(op), draw(st.integers(0, 255)), 0, draw(st.integers(1, 2**64 - 1)),
                            draw(u64), length)
    return draw(st.one_of(st.just(head), mutated(head), st.binary(max_size=40)))


@fuzz(300)
@given(requests())
def test_request_header(raw: bytes) -> None:
    try:
        req = bio.decode_request(raw)
    except bio.BlockProtocolError:
        return
    assert len(raw) >= bio.REQUEST_SIZE and raw[:4] == bio.MAGIC_REQUEST
    assert 0 <= req.length <= bio.MAX_LENGTH  # the server reads (and allocates) only this much
    assert req.op == bio.Op.WRITE or req.op == bio.Op.READ or req.length == 0
    assert bio.encode_request(req.op, req.disk, wnum=req.wnum, offset=req.offset,
                              length=req.length, data=b"x" * req.length if req.op == bio.Op.WRITE else b"") \
        [:bio.REQUEST_SIZE] == raw[:bio.REQUEST_SIZE]


@pytest.mark.parametrize("length", [bio.MAX_LENGTH + 1, 2**31, 2**32 - 1])
def test_a_huge_length_is_refused_before_reading(length: int) -> None:
    raw = bio.REQUEST.pack(bio.MAGIC_REQUEST, int(bio.Op.WRITE), 0, 0, 1, 0, length)
    with pytest.raises(bio.BlockProtocolError):
        bio.decode_request(raw)
    raw = bio.RESPONSE.pack(bio.MAGIC_RESPONSE, 0, 0, 0, 1, length)
    with pytest.raises(bio.BlockProtocolError):
        bio.decode_response(raw)


@fuzz(300)
@given(st.one_of(st.binary(max_size=30), st.builds(lambda s, w, n: bio.RESPONSE.pack(bio.MAGIC_RESPONSE, s, 0, 0, w, n),
                                                   st.integers(0, 3), u64, st.integers(0, 2**32 - 1)),
                 mutated(bio.encode_response(bio.Status.OK, 7, b"abc"))))
def test_response_header(raw: bytes) -> None:
    try:
        resp = bio.decode_response(raw)
    except bio.BlockProtocolError:
        return
    assert 0 <= resp.length <= bio.MAX_LENGTH and resp.status in set(bio.Status)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                    max_size=4), max_leaves=12)
good_info = bio.info_payload([{"index": 0, "name": "d0", "size_bytes": 1 << 20}])


@fuzz(300)
@given(st.one_of(st.binary(max_size=200), mutated(good_info),
                 json_values.map(lambda v: json.dumps({"disks": v}).encode()),
                 st.integers(1, 200_000).map(lambda n: b'{"disks": ' + b"[" * n)))
def test_info_payload(raw: bytes) -> None:
    """A hostile INFO answer (deep nesting included) is BlockProtocolError or a list of disks."""
    try:
        disks = bio.parse_info(raw)
    except bio.BlockProtocolError:
        return
    for disk in disks:
        assert isinstance(disk, dict) and isinstance(disk["index"], int) and isinstance(disk["name"], str)
        assert isinstance(disk["size_bytes"], int)
