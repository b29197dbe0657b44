"""The NBD codec: layouts, negotiation parsers and the request check (no sockets)."""

from __future__ import annotations

import pytest

from common.wire import nbd as wn

SIZE = 64 << 20


def req(cmd: int, offset: int = 0, length: int = 0, flags: int = 0, handle: int = 7) -> wn.Request:
    return wn.decode_request(wn.REQUEST.pack(wn.REQUEST_MAGIC, flags, cmd, handle, offset, length))


def test_greeting_is_fixed_newstyle_without_zeroes() -> None:
    raw = wn.encode_greeting()
    assert raw[:8] == b"NBDMAGIC" and raw[8:16] == b"IHAVEOPT"
    assert wn.U16.unpack(raw[16:])[0] == wn.HandshakeFlag.FIXED_NEWSTYLE | wn.HandshakeFlag.NO_ZEROES


def test_client_flags_refuse_unknown_bits() -> None:
    assert wn.decode_client_flags(wn.CLIENT_FLAGS.pack(3)) == wn.ClientFlag.C_FIXED_NEWSTYLE | wn.ClientFlag.C_NO_ZEROES
    with pytest.raises(wn.NbdProtocolError, match="unknown flags"):
        wn.decode_client_flags(wn.CLIENT_FLAGS.pack(4))
    with pytest.raises(wn.NbdProtocolError):
        wn.decode_client_flags(b"\0\0")


def test_option_header_magic_and_cap() -> None:
    header = wn.decode_option_header(wn.encode_option(wn.Opt.LIST)[:16])
    assert header == wn.OptionHeader(wn.Opt.LIST, 0) and not header.too_big
    assert wn.decode_option_header(wn.OPTION.pack(wn.IHAVEOPT, 7, 2**32 - 1)).too_big
    with pytest.raises(wn.NbdProtocolError, match="magic"):
        wn.decode_option_header(wn.OPTION.pack(wn.NBDMAGIC, 7, 0))


def test_info_request_round_trip_and_length_checks() -> None:
    data = wn.encode_info_request("disk0", (wn.Info.BLOCK_SIZE, wn.Info.NAME))
    assert wn.decode_info_request(data) == wn.InfoRequest("disk0", (3, 1))
    with pytest.raises(wn.NbdProtocolError, match="expected"):
        wn.decode_info_request(data + b"\0")  # a trailing byte
    with pytest.raises(wn.NbdProtocolError, match="does not fit"):
        wn.decode_info_request(wn.U32.pack(2**32 - 1) + b"\0\0")
    with pytest.raises(wn.NbdProtocolError, match="more than"):
        wn.decode_info_request(wn.U32.pack(0) + wn.U16.pack(wn.MAX_INFO_REQUESTS + 1))


@pytest.mark.parametrize("raw", [b"a\0b", b"\xff\xfe", b"x" * (wn.MAX_NAME_BYTES + 1)])
def test_bad_names_are_refused(raw: bytes) -> None:
    with pytest.raises(wn.NbdProtocolError):
        wn.decode_name(raw)


def test_replies_have_their_documented_layouts() -> None:
    rep = wn.encode_option_reply(wn.Opt.GO, wn.Rep.INFO, wn.encode_info_export(SIZE, wn.SERVED_FLAGS))
    assert wn.decode_option_reply(rep[:20]) == (wn.Opt.GO, wn.Rep.INFO, 12)
    assert wn.INFO_EXPORT.unpack(rep[20:]) == (0, SIZE, 0b1101101)
    assert len(wn.encode_export_name_reply(SIZE, 1, no_zeroes=False)) == 10 + 124
    assert len(wn.encode_export_name_reply(SIZE, 1, no_zeroes=True)) == 10
    assert wn.decode_simple_reply(wn.encode_simple_reply(99, wn.Errno.ENOSPC)) == (28, 99)
    assert wn.Rep.ERR_UNSUP == 0x80000001 and wn.Rep.ERR_UNKNOWN == 0x80000006


def test_request_bad_magic_is_a_protocol_error() -> None:
    with pytest.raises(wn.NbdProtocolError, match="magic"):
        wn.decode_request(wn.REQUEST.pack(0x12345678, 0, 0, 1, 0, 0))
    with pytest.raises(wn.NbdProtocolError):
        wn.decode_request(b"\0" * 27)


def test_check_accepts_in_range_requests() -> None:
    assert wn.check_request(req(wn.Cmd.READ, SIZE - 512, 512), SIZE) == wn.Verdict()
    assert wn.check_request(req(wn.Cmd.WRITE, 0, 4096, wn.CmdFlag.FUA), SIZE) == wn.Verdict()
    assert wn.check_request(req(wn.Cmd.TRIM, 0, SIZE), SIZE) == wn.Verdict()  # no payload: may exceed max
    assert wn.check_request(req(wn.Cmd.WRITE_ZEROES, 0, SIZE, wn.CmdFlag.NO_HOLE), SIZE) == wn.Verdict()
    assert wn.check_request(req(wn.Cmd.FLUSH), SIZE) == wn.Verdict()


def test_check_out_of_range_is_einval_and_writes_past_the_end_enospc() -> None:
    assert wn.check_request(req(wn.Cmd.READ, SIZE - 511, 512), SIZE).error == wn.Errno.EINVAL
    assert wn.check_request(req(wn.Cmd.TRIM, SIZE + 1, 0), SIZE).error == wn.Errno.EINVAL
    v = wn.check_request(req(wn.Cmd.WRITE, SIZE - 1, 2), SIZE)
    assert (v.error, v.skip, v.close) == (wn.Errno.ENOSPC, 2, False)  # the payload is dropped, the link stays
    assert wn.check_request(req(wn.Cmd.WRITE_ZEROES, 2**64 - 1, 2**32 - 1), SIZE).error == wn.Errno.ENOSPC


def test_check_oversized_write_is_skipped_or_closes() -> None:
    v = wn.check_request(req(wn.Cmd.WRITE, 0, 2 << 20), SIZE, max_payload=1 << 20, skip_max=4 << 20)
    assert (v.error, v.skip, v.close) == (wn.Errno.EINVAL, 2 << 20, False)
    v = wn.check_request(req(wn.Cmd.WRITE, 0, 8 << 20), SIZE, max_payload=1 << 20, skip_max=4 << 20)
    assert (v.error, v.skip, v.close) == (wn.Errno.EINVAL, 0, True)
    v = wn.check_request(req(wn.Cmd.READ, 0, 2 << 20), SIZE, max_payload=1 << 20)
    assert (v.error, v.skip, v.close) == (wn.Errno.EINVAL, 0, False)


def test_check_unknown_command_or_flag_is_einval() -> None:
    assert wn.check_request(req(5), SIZE).error == wn.Errno.EINVAL  # CACHE is not served
    assert wn.check_request(req(wn.Cmd.READ, 0, 1, flags=wn.CmdFlag.NO_HOLE), SIZE).error == wn.Errno.EINVAL
    v = wn.check_request(req(wn.Cmd.WRITE, 0, 100, flags=1 << 9), SIZE)
    assert (v.error, v.skip) == (wn.Errno.EINVAL, 100)


def test_zero_pieces_cover_the_range_in_bounded_chunks() -> None:
    pieces = list(wn.zero_pieces(10, 10 << 20, 4 << 20))
    assert pieces == [(10, 4 << 20), (10 + (4 << 20), 4 << 20), (10 + (8 << 20), 2 << 20)]
    assert list(wn.zero_pieces(5, 0)) == []
