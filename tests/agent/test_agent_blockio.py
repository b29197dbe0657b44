"""Local block protocol codec: sizes, round trips, and every rejected header."""

from __future__ import annotations

import pytest

from common.wire import blockio as bio


def test_struct_sizes_match_the_protocol() -> None:
    assert bio.REQUEST_SIZE == 28
    assert bio.RESPONSE_SIZE == 20


def test_write_request_round_trip() -> None:
    raw = bio.encode_request(bio.Op.WRITE, 2, wnum=77, offset=4096, data=b"abc")
    req = bio.decode_request(raw[: bio.REQUEST_SIZE])
    assert req == bio.Request(bio.Op.WRITE, 2, 77, 4096, 3)
    assert raw[bio.REQUEST_SIZE:] == b"abc"


def test_read_request_has_no_body() -> None:
    raw = bio.encode_request(bio.Op.READ, 0, offset=512, length=1024)
    assert len(raw) == bio.REQUEST_SIZE
    assert bio.decode_request(raw).length == 1024


def test_response_round_trip() -> None:
    raw = bio.encode_response(bio.Status.OK, 9, b"data")
    resp = bio.decode_response(raw)
    assert (resp.status, resp.wnum, resp.length) == (bio.Status.OK, 9, 4)
    err = bio.decode_response(bio.encode_error(5, "nope"))
    assert err.status == bio.Status.ERROR


def test_info_payload_round_trip() -> None:
    disks = [{"index": 0, "name": "d0", "size_bytes": 1 << 20}]
    assert bio.parse_info(bio.info_payload(disks)) == disks
    with pytest.raises(bio.BlockProtocolError):
        bio.parse_info(b"[1]")


@pytest.mark.parametrize("fields", [
    dict(magic=b"XXXX"), dict(op=9), dict(reserved=1), dict(length=bio.MAX_LENGTH + 1),
    dict(op=1, wnum=0), dict(op=1, length=0), dict(op=3, length=5),
])
def test_bad_request_headers_are_rejected(fields: dict[str, object]) -> None:
    f: dict[str, object] = dict(magic=bio.MAGIC_REQUEST, op=1, disk=0, reserved=0, wnum=1, offset=0, length=8)
    f.update(fields)
    raw = bio.REQUEST.pack(*f.values())
    with pytest.raises(bio.BlockProtocolError):
        bio.decode_request(raw)


def test_short_and_oversized_responses_are_rejected() -> None:
    with pytest.raises(bio.BlockProtocolError):
        bio.decode_response(b"DRIR")
    with pytest.raises(bio.BlockProtocolError):
        bio.decode_response(bio.RESPONSE.pack(bio.MAGIC_RESPONSE, 0, 0, 0, 0, bio.MAX_LENGTH + 1))
    with pytest.raises(bio.BlockProtocolError):
        bio.decode_response(bio.RESPONSE.pack(bio.MAGIC_RESPONSE, 7, 0, 0, 0, 0))


def test_encoder_refuses_what_the_decoder_refuses() -> None:
    with pytest.raises(bio.BlockProtocolError):
        bio.encode_request(bio.Op.WRITE, 0, wnum=0, data=b"x")
    with pytest.raises(ValueError):
        bio.encode_request(bio.Op.READ, 0, data=b"x")
    with pytest.raises(bio.BlockProtocolError):
        bio.encode_request(bio.Op.READ, 300, length=1)
