"""NBD (Network Block Device) protocol: the agent's export of its disks to real block clients.

The subset served (fixed newstyle negotiation, simple replies only)::

    greeting      S: NBDMAGIC u64, IHAVEOPT u64, handshake flags u16 (FIXED_NEWSTYLE | NO_ZEROES)
    client flags  C: u32 (C_FIXED_NEWSTYLE, C_NO_ZEROES; any other bit -> the server hangs up)
    option        C: IHAVEOPT u64, option u32, length u32, ``length`` data bytes
    option reply  S: REPLY_MAGIC u64, option u32, reply type u32, length u32, ``length`` bytes
    EXPORT_NAME   S: export size u64, transmission flags u16 (+ 124 zero bytes without NO_ZEROES)
    request       C: REQUEST_MAGIC u32, command flags u16, type u16, handle u64, offset u64,
                     length u32; then ``length`` data bytes for WRITE only
    simple reply  S: SIMPLE_REPLY_MAGIC u32, error u32 (an NBD errno), handle u64; then the
                     data for a successful READ only

Every integer is big-endian (network order), as the protocol says — unlike drlab's own formats.

Parsers never trust input: an option's length is capped at :data:`MAX_OPTION_BYTES` before its
data is read; names are at most :data:`MAX_NAME_BYTES` of UTF-8 without NUL; a request is
checked against the export's size and the largest payload (:func:`check_request`) before any
payload is read or allocated. Framing errors raise :class:`NbdProtocolError` (the connection
cannot continue); a well-framed request the server will not run gets an errno reply instead.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum, IntFlag

NBDMAGIC = 0x4E42444D41474943  # b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # b"IHAVEOPT"
REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

GREETING = struct.Struct(">QQH")
CLIENT_FLAGS = struct.Struct(">I")
OPTION = struct.Struct(">QII")
OPTION_REPLY = struct.Struct(">QIII")
EXPORT_NAME_REPLY = struct.Struct(">QH")
INFO_EXPORT = struct.Struct(">HQH")
INFO_BLOCK_SIZE = struct.Struct(">HIII")
REQUEST = struct.Struct(">IHHQQI")
SIMPLE_REPLY = struct.Struct(">IIQ")
U32 = struct.Struct(">I")
U16 = struct.Struct(">H")
assert GREETING.size == 18
assert CLIENT_FLAGS.size == 4
assert OPTION.size == 16
assert OPTION_REPLY.size == 20
assert EXPORT_NAME_REPLY.size == 10
assert INFO_EXPORT.size == 12
assert INFO_BLOCK_SIZE.size == 14
assert REQUEST.size == 28
assert SIMPLE_REPLY.size == 16

EXPORT_NAME_PADDING = 124  # zero bytes after the EXPORT_NAME reply unless NO_ZEROES was agreed
MAX_NAME_BYTES = 4096  # the protocol's longest string
MAX_INFO_REQUESTS = 64  # NBD_OPT_INFO / GO: more requested info types than this is refused
MAX_OPTION_BYTES = 4 + MAX_NAME_BYTES + 2 + 2 * MAX_INFO_REQUESTS  # the largest option data read
MAX_PAYLOAD_BYTES = 32 << 20  # the largest READ / WRITE length served (2^25, what clients assume)
SKIP_MAX_BYTES = 64 << 20  # an oversized WRITE payload up to this is read and dropped; beyond: hang up
ZERO_CHUNK_BYTES = 4 << 20  # TRIM / WRITE_ZEROES write zeros in pieces of at most this
PREFERRED_BLOCK_BYTES = 4096


class HandshakeFlag(IntFlag):
    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class ClientFlag(IntFlag):
    C_FIXED_NEWSTYLE = 1 << 0
    C_NO_ZEROES = 1 << 1


class Opt(IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8


class Rep(IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    ERR_UNSUP = (1 << 31) + 1
    ERR_POLICY = (1 << 31) + 2
    ERR_INVALID = (1 << 31) + 3
    ERR_UNKNOWN = (1 << 31) + 6
    ERR_SHUTDOWN = (1 << 31) + 7
    ERR_TOO_BIG = (1 << 31) + 9


class Info(IntEnum):
    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class TransFlag(IntFlag):
    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6


SERVED_FLAGS = (TransFlag.HAS_FLAGS | TransFlag.SEND_FLUSH | TransFlag.SEND_FUA | TransFlag.SEND_TRIM
                | TransFlag.SEND_WRITE_ZEROES)


class Cmd(IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    WRITE_ZEROES = 6


class CmdFlag(IntFlag):
    FUA = 1 << 0
    NO_HOLE = 1 << 1


class Errno(IntEnum):
    """Error values of simple replies (the protocol's own numbering, not the host's)."""

    OK = 0
    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


class NbdProtocolError(ValueError):
    """Bytes that break the protocol's framing: the connection cannot continue."""


# ------------------------------------------------------------------------------ negotiation


def encode_greeting() -> bytes:
    return GREETING.pack(NBDMAGIC, IHAVEOPT, int(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES))


def decode_client_flags(data: bytes) -> ClientFlag:
    """The client's flags; an unknown bit is a protocol error (the server must hang up)."""
    if len(data) != CLIENT_FLAGS.size:
        raise NbdProtocolError(f"client flags are {CLIENT_FLAGS.size} bytes, got {len(data)}")
    (flags,) = CLIENT_FLAGS.unpack(data)
    unknown = flags & ~int(ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES)
    if unknown:
        raise NbdProtocolError(f"client set unknown flags {unknown:#x}")
    return ClientFlag(flags)


@dataclass(frozen=True)
class OptionHeader:
    option: int  # may be a value outside :class:`Opt` (answered NBD_REP_ERR_UNSUP)
    length: int

    @property
    def too_big(self) -> bool:
        """Data longer than any option served needs: refused unread (the server hangs up)."""
        return self.length > MAX_OPTION_BYTES


def decode_option_header(data: bytes) -> OptionHeader:
    if len(data) != OPTION.size:
        raise NbdProtocolError(f"an option header is {OPTION.size} bytes, got {len(data)}")
    magic, option, length = OPTION.unpack(data)
    if magic != IHAVEOPT:
        raise NbdProtocolError(f"bad option magic {magic:#018x}")
    return OptionHeader(option, length)


def encode_option(option: int, data: bytes = b"") -> bytes:
    """A client's option (used by test clients)."""
    return OPTION.pack(IHAVEOPT, option, len(data)) + data


def encode_option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(REPLY_MAGIC, option, reply, len(data)) + data


def decode_option_reply(data: bytes) -> tuple[int, int, int]:
    """(option, reply type, data length) of an option reply header (used by test clients)."""
    if len(data) != OPTION_REPLY.size:
        raise NbdProtocolError(f"an option reply header is {OPTION_REPLY.size} bytes, got {len(data)}")
    magic, option, reply, length = OPTION_REPLY.unpack(data)
    if magic != REPLY_MAGIC:
        raise NbdProtocolError(f"bad option reply magic {magic:#018x}")
    return option, reply, length


def decode_name(data: bytes) -> str:
    """An export name: UTF-8, no NUL, at most :data:`MAX_NAME_BYTES`."""
    if len(data) > MAX_NAME_BYTES:
        raise NbdProtocolError(f"name of {len(data)} bytes is longer than {MAX_NAME_BYTES}")
    if b"\0" in data:
        raise NbdProtocolError("name contains NUL")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NbdProtocolError(f"name is not UTF-8: {exc}") from exc


@dataclass(frozen=True)
class InfoRequest:
    """The data of NBD_OPT_INFO / NBD_OPT_GO: an export name and the info types asked for."""

    name: str
    infos: tuple[int, ...]


def decode_info_request(data: bytes) -> InfoRequest:
    """u32 name length, name, u16 count, count x u16 info type — lengths must add up exactly."""
    if len(data) < 4 + 2:
        raise NbdProtocolError(f"INFO/GO data of {len(data)} bytes is shorter than 6")
    (name_len,) = U32.unpack_from(data, 0)
    if name_len > MAX_NAME_BYTES or 4 + name_len + 2 > len(data):
        raise NbdProtocolError(f"INFO/GO name length {name_len} does not fit in {len(data)} bytes")
    name = decode_name(data[4:4 + name_len])
    (count,) = U16.unpack_from(data, 4 + name_len)
    if count > MAX_INFO_REQUESTS:
        raise NbdProtocolError(f"INFO/GO asks for {count} info types, more than {MAX_INFO_REQUESTS}")
    rest = 4 + name_len + 2
    if len(data) != rest + 2 * count:
        raise NbdProtocolError(f"INFO/GO data is {len(data)} bytes, expected {rest + 2 * count}")
    infos = tuple(U16.unpack_from(data, rest + 2 * i)[0] for i in range(count))
    return InfoRequest(name, infos)


def encode_info_request(name: str, infos: tuple[int, ...] = ()) -> bytes:
    raw = name.encode()
    return U32.pack(len(raw)) + raw + U16.pack(len(infos)) + b"".join(U16.pack(i) for i in infos)


def encode_info_export(size_bytes: int, flags: int) -> bytes:
    return INFO_EXPORT.pack(Info.EXPORT, size_bytes, flags)


def encode_info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    return INFO_BLOCK_SIZE.pack(Info.BLOCK_SIZE, minimum, preferred, maximum)


def encode_info_name(name: str) -> bytes:
    return U16.pack(Info.NAME) + name.encode()


def encode_server_entry(name: str) -> bytes:
    """NBD_REP_SERVER data: u32 name length, name."""
    raw = name.encode()
    return U32.pack(len(raw)) + raw


def encode_export_name_reply(size_bytes: int, flags: int, no_zeroes: bool) -> bytes:
    return EXPORT_NAME_REPLY.pack(size_bytes, flags) + (b"" if no_zeroes else bytes(EXPORT_NAME_PADDING))


# ------------------------------------------------------------------------------ transmission


@dataclass(frozen=True)
class Request:
    flags: int
    cmd: int  # may be a value outside :class:`Cmd` (answered EINVAL)
    handle: int
    offset: int
    length: int

    @property
    def payload_bytes(self) -> int:
        """Bytes that follow the header on the wire (WRITE only)."""
        return self.length if self.cmd == Cmd.WRITE else 0

    @property
    def fua(self) -> bool:
        return bool(self.flags & CmdFlag.FUA)


def decode_request(data: bytes) -> Request:
    if len(data) != REQUEST.size:
        raise NbdProtocolError(f"a request header is {REQUEST.size} bytes, got {len(data)}")
    magic, flags, cmd, handle, offset, length = REQUEST.unpack(data)
    if magic != REQUEST_MAGIC:
        raise NbdProtocolError(f"bad request magic {magic:#010x}")
    return Request(flags, cmd, handle, offset, length)


def encode_request(cmd: int, handle: int, offset: int = 0, length: int = 0, flags: int = 0,
                   data: bytes = b"") -> bytes:
    """A client's request (used by test clients); WRITE's length is ``len(data)``."""
    if cmd == Cmd.WRITE:
        length = len(data)
    return REQUEST.pack(REQUEST_MAGIC, flags, cmd, handle, offset, length) + data


@dataclass(frozen=True)
class Verdict:
    """What the server does with a request before running it.

    ``error``: 0 to run it, else the errno of the reply; ``skip``: payload bytes to read and
    drop before replying; ``close``: hang up after the reply (the payload cannot be skipped)."""

    error: Errno = Errno.OK
    skip: int = 0
    close: bool = False
    reason: str = ""


_FLAGS_ALLOWED = {Cmd.READ: CmdFlag.FUA, Cmd.WRITE: CmdFlag.FUA, Cmd.DISC: CmdFlag.FUA, Cmd.FLUSH: CmdFlag.FUA,
                  Cmd.TRIM: CmdFlag.FUA, Cmd.WRITE_ZEROES: CmdFlag.FUA | CmdFlag.NO_HOLE}
_WRITES = (Cmd.WRITE, Cmd.WRITE_ZEROES)  # past the end: ENOSPC, as the protocol asks of writes
_RANGED = (Cmd.READ, Cmd.WRITE, Cmd.TRIM, Cmd.WRITE_ZEROES)


def check_request(req: Request, size_bytes: int, max_payload: int = MAX_PAYLOAD_BYTES,
                  skip_max: int = SKIP_MAX_BYTES) -> Verdict:
    """Refuse what cannot run, before any payload is read: an unknown command or flag, a READ or
    WRITE longer than ``max_payload`` (EINVAL; a WRITE's payload is skipped when it is at most
    ``skip_max`` bytes, else the server hangs up), a range outside the export (EINVAL; ENOSPC for
    a write: WRITE, WRITE_ZEROES). FUA is accepted on every command; TRIM / WRITE_ZEROES may
    be as long as the export."""
    payload = req.payload_bytes
    skip = payload if payload <= skip_max else 0
    close = payload > skip_max
    if req.cmd not in _FLAGS_ALLOWED:
        return Verdict(Errno.EINVAL, 0, False, f"unknown command {req.cmd}")
    cmd = Cmd(req.cmd)
    if req.flags & ~int(_FLAGS_ALLOWED[cmd]):
        return Verdict(Errno.EINVAL, skip, close, f"{cmd.name}: unsupported flags {req.flags:#x}")
    if cmd in (Cmd.READ, Cmd.WRITE) and req.length > max_payload:
        return Verdict(Errno.EINVAL, skip, close, f"{cmd.name} of {req.length} bytes is over {max_payload}")
    if cmd in _RANGED and (req.offset > size_bytes or req.length > size_bytes - req.offset):
        err = Errno.ENOSPC if cmd in _WRITES else Errno.EINVAL
        return Verdict(err, skip, close, f"{cmd.name} [{req.offset}, +{req.length}) is outside {size_bytes} bytes")
    return Verdict()


def encode_simple_reply(handle: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle)


def decode_simple_reply(data: bytes) -> tuple[int, int]:
    """(error, handle) of a simple reply (used by test clients)."""
    if len(data) != SIMPLE_REPLY.size:
        raise NbdProtocolError(f"a simple reply is {SIMPLE_REPLY.size} bytes, got {len(data)}")
    magic, error, handle = SIMPLE_REPLY.unpack(data)
    if magic != SIMPLE_REPLY_MAGIC:
        raise NbdProtocolError(f"bad reply magic {magic:#010x}")
    return error, handle


def zero_pieces(offset: int, length: int, chunk: int = ZERO_CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """The (offset, length) pieces TRIM / WRITE_ZEROES write, each at most ``chunk`` bytes."""
    if chunk <= 0:
        raise ValueError("chunk must be > 0")
    end = offset + length
    for off in range(offset, end, chunk):
        yield off, min(chunk, end - off)
