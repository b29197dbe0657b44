"""Local block protocol: a workload (or any block client) talks to the agent over a Unix socket.

Layout (all little-endian)::

    request   REQUEST (28 bytes): magic b"DRIO", op u8, disk index u8, reserved u16 (0),
              wnum u64 (WRITE: machine write number, strictly increasing; else 0),
              offset u64, length u32; then ``length`` data bytes for WRITE only
    response  RESPONSE (20 bytes): magic b"DRIR", status u8 (0 ok, 1 error), reserved u8 (0),
              reserved u16 (0), wnum u64 (echo of the request), length u32; then ``length``
              bytes: READ data, INFO JSON ``{"disks": [{"index", "name", "size_bytes"}]}``,
              or a UTF-8 error message

Requests on one connection are answered in order. ``length`` is capped at :data:`MAX_LENGTH`
before anything is allocated; every parse failure raises :class:`BlockProtocolError`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

MAGIC_REQUEST = b"DRIO"
MAGIC_RESPONSE = b"DRIR"
REQUEST = struct.Struct("<4sBBHQQI")
RESPONSE = struct.Struct("<4sBBHQI")
assert REQUEST.size == 28
assert RESPONSE.size == 20

REQUEST_SIZE = REQUEST.size
RESPONSE_SIZE = RESPONSE.size
MAX_LENGTH = 16 << 20  # 16 MiB: the largest WRITE / READ / reply payload
_U64 = (1 << 64) - 1


class Op(IntEnum):
    WRITE = 1
    READ = 2
    FLUSH = 3
    INFO = 4


class Status(IntEnum):
    OK = 0
    ERROR = 1


class BlockProtocolError(ValueError):
    """A header that breaks the protocol (the connection cannot continue)."""


@dataclass(frozen=True)
class Request:
    op: Op
    disk: int
    wnum: int
    offset: int
    length: int


@dataclass(frozen=True)
class Response:
    status: Status
    wnum: int
    length: int


def encode_request(op: Op, disk: int = 0, *, wnum: int = 0, offset: int = 0, length: int = 0,
                   data: bytes | bytearray | memoryview = b"") -> bytes:
    """A request header, followed by ``data`` for WRITE (``length`` defaults to ``len(data)``)."""
    if op == Op.WRITE:
        length = len(data)
    elif data:
        raise ValueError("only WRITE carries data")
    _check_request(Op(op), disk, wnum, offset, length, BlockProtocolError)
    return REQUEST.pack(MAGIC_REQUEST, int(op), disk, 0, wnum, offset, length) + bytes(data)


def decode_request(buf: bytes | bytearray | memoryview) -> Request:
    """Parse and check a request header (exactly REQUEST_SIZE bytes are read)."""
    if len(buf) < REQUEST_SIZE:
        raise BlockProtocolError(f"request header shorter than {REQUEST_SIZE} bytes")
    magic, op, disk, reserved, wnum, offset, length = REQUEST.unpack_from(buf, 0)
    if magic != MAGIC_REQUEST:
        raise BlockProtocolError("bad request magic")
    if reserved:
        raise BlockProtocolError("reserved request field set")
    if op not in Op._value2member_map_:
        raise BlockProtocolError(f"unknown op {op}")
    _check_request(Op(op), disk, wnum, offset, length, BlockProtocolError)
    return Request(Op(op), disk, wnum, offset, length)


def _check_request(op: Op, disk: int, wnum: int, offset: int, length: int, exc: type[Exception]) -> None:
    if not 0 <= disk <= 255:
        raise exc(f"disk index {disk} out of range")
    if not 0 <= wnum <= _U64 or not 0 <= offset <= _U64:
        raise exc("wnum or offset out of u64 range")
    if not 0 <= length <= MAX_LENGTH:
        raise exc(f"length {length} exceeds {MAX_LENGTH}")
    if op == Op.WRITE and (wnum < 1 or length < 1):
        raise exc("WRITE needs wnum >= 1 and length >= 1")
    if op in (Op.FLUSH, Op.INFO) and length:
        raise exc(f"{op.name} carries no length")


def encode_response(status: Status, wnum: int = 0, payload: bytes | bytearray | memoryview = b"") -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError(f"response payload exceeds {MAX_LENGTH}")
    return RESPONSE.pack(MAGIC_RESPONSE, int(status), 0, 0, wnum, len(payload)) + bytes(payload)


def encode_error(wnum: int, message: str) -> bytes:
    return encode_response(Status.ERROR, wnum, message.encode()[:4096])


def decode_response(buf: bytes | bytearray | memoryview) -> Response:
    """Parse and check a response header (exactly RESPONSE_SIZE bytes are read)."""
    if len(buf) < RESPONSE_SIZE:
        raise BlockProtocolError(f"response header shorter than {RESPONSE_SIZE} bytes")
    magic, status, reserved1, reserved2, wnum, length = RESPONSE.unpack_from(buf, 0)
    if magic != MAGIC_RESPONSE:
        raise BlockProtocolError("bad response magic")
    if reserved1 or reserved2:
        raise BlockProtocolError("reserved response field set")
    if status not in Status._value2member_map_:
        raise BlockProtocolError(f"unknown status {status}")
    if length > MAX_LENGTH:
        raise BlockProtocolError(f"response length {length} exceeds {MAX_LENGTH}")
    return Response(Status(status), wnum, length)


def info_payload(disks: list[dict[str, Any]]) -> bytes:
    """INFO reply body: ``disks`` items are ``{"index", "name", "size_bytes"}``."""
    return json.dumps({"disks": disks}).encode()


def parse_info(payload: bytes | bytearray | memoryview) -> list[dict[str, Any]]:
    """The disks of an INFO reply; BlockProtocolError unless it is ``{"disks": [...]}`` whose items
    have an int ``index``, a str ``name`` and an int ``size_bytes`` (deep nesting included)."""
    try:
        doc = json.loads(bytes(payload))
        disks = doc["disks"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise BlockProtocolError(f"bad INFO payload: {str(exc)[:200]}") from exc
    if not isinstance(disks, list):
        raise BlockProtocolError("bad INFO payload: disks is not a list")
    for disk in disks:
        if not (isinstance(disk, dict) and _is_int(disk.get("index")) and isinstance(disk.get("name"), str)
                and _is_int(disk.get("size_bytes"))):
            raise BlockProtocolError("bad INFO payload: a disk needs an int index, a str name, an int size_bytes")
    return disks


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
