"""The workload's write log: which writes a machine's workload had acknowledged, and when.

Layout (little-endian), append-only::

    header   HEADER (24 bytes): magic b"DRWL", version u16, reserved u16, seed u64,
             data-profile id u32, params length u32; then the profile params as JSON
             (``params length`` bytes, at most MAX_PARAMS); then crc32 u32 of all of the above
    record   RECORD (36 bytes): wnum u64, disk index u16, kind u8 (1 prefill, 2 write, 3 in doubt),
             reserved u8, offset u64, length u32, ack_ns u64, crc32 u32 of the first 32 bytes

Data is not stored: it is :func:`common.datagen.data_for` of (seed, wnum, length, profile).
One log per machine, shared by prefill and workload runs; wnums strictly increase along it.

Rules: a record is appended only after its write was acknowledged — except an *in doubt*
record, appended when the connection to the agent broke with a write outstanding (the agent
was killed): that write may have reached the disk or not, and its number is never reused. A crash mid-append leaves
a torn tail — a partial record, or a last record whose crc fails — that readers ignore and
:class:`LogWriter` truncates before appending. A bad crc anywhere before the tail is
corruption and raises :class:`WriteLogError`.
"""

from __future__ import annotations

import bisect
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.datagen import Profile, profile_from_id
from common.errors import BadRequest, ConfigError

MAGIC = b"DRWL"
VERSION = 1
HEADER = struct.Struct("<4sHHQII")
RECORD = struct.Struct("<QHBBQIQI")
_CRC = struct.Struct("<I")
assert HEADER.size == 24
assert RECORD.size == 36
MAX_PARAMS = 4096
KIND_PREFILL = 1
KIND_WRITE = 2
KIND_DOUBT = 3  # sent, but the agent died before answering: the disk may or may not hold it
_KINDS = (KIND_PREFILL, KIND_WRITE, KIND_DOUBT)


class WriteLogError(BadRequest):
    code = "malformed_write_log"


@dataclass(frozen=True)
class LogHeader:
    seed: int
    profile: Profile
    size: int  # bytes the header takes in the file

    def data_args(self) -> tuple[int, Profile]:
        return self.seed, self.profile


@dataclass(frozen=True)
class LogRecord:
    wnum: int
    disk: int
    kind: int
    offset: int
    length: int
    ack_ns: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def encode_header(seed: int, prof: Profile) -> bytes:
    params = prof.params_json()
    if len(params) > MAX_PARAMS:
        raise ConfigError(f"profile params exceed {MAX_PARAMS} bytes")
    body = HEADER.pack(MAGIC, VERSION, 0, seed, prof.profile_id, len(params)) + params
    return body + _CRC.pack(zlib.crc32(body))


def decode_header(buf: bytes) -> LogHeader | None:
    """The header at the start of ``buf``; None if ``buf`` is too short to hold it (torn)."""
    if len(buf) < HEADER.size:
        if MAGIC.startswith(buf[:4]):
            return None
        raise WriteLogError("not a write log (bad magic)")
    magic, version, reserved, seed, profile_id, plen = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise WriteLogError("not a write log (bad magic)")
    if version != VERSION or reserved:
        raise WriteLogError(f"unsupported write log version {version}")
    if plen > MAX_PARAMS:
        raise WriteLogError(f"profile params length {plen} exceeds {MAX_PARAMS}")
    end = HEADER.size + plen
    if len(buf) < end + _CRC.size:
        return None
    (crc,) = _CRC.unpack_from(buf, end)
    if crc != zlib.crc32(buf[:end]):
        raise WriteLogError("write log header crc mismatch")
    return LogHeader(seed, _profile(profile_id, buf[HEADER.size:end]), end + _CRC.size)


def _profile(profile_id: int, raw: bytes) -> Profile:
    """The header's data profile; WriteLogError for an unknown id or params that are not a JSON
    object with numeric shares (hostile nesting included)."""
    try:
        params = json.loads(raw)
        if not isinstance(params, dict):
            raise WriteLogError("profile params are not an object")
        prof = profile_from_id(profile_id, params)
        prof.zero_share + prof.text_share  # noqa: B018 - both must be numbers
    except (ValueError, TypeError, RecursionError, ConfigError) as exc:
        raise WriteLogError(f"bad profile params: {str(exc)[:200]}") from exc
    return prof


def encode_record(rec: LogRecord) -> bytes:
    if rec.kind not in _KINDS:
        raise ValueError(f"unknown record kind {rec.kind}")
    body = RECORD.pack(rec.wnum, rec.disk, rec.kind, 0, rec.offset, rec.length, rec.ack_ns, 0)[:-4]
    return body + _CRC.pack(zlib.crc32(body))


def decode_record(buf: bytes | memoryview, pos: int = 0) -> LogRecord | None:
    """The record at ``pos``; None if it is cut short or its crc or fields are bad."""
    if len(buf) - pos < RECORD.size or pos < 0:
        return None
    wnum, disk, kind, reserved, offset, length, ack_ns, crc = RECORD.unpack_from(buf, pos)
    if crc != zlib.crc32(buf[pos:pos + RECORD.size - 4]) or kind not in _KINDS or reserved:
        return None
    return LogRecord(wnum, disk, kind, offset, length, ack_ns)


def _scan(buf: bytes) -> tuple[LogHeader | None, list[LogRecord], int]:
    """Header, valid records, and the byte length of the valid prefix of a log's content."""
    header = decode_header(buf)
    if header is None:
        return None, [], 0
    records: list[LogRecord] = []
    pos, view = header.size, memoryview(buf)
    nfull = (len(buf) - header.size) // RECORD.size
    for i in range(nfull):
        rec = decode_record(view, pos)
        if rec is None:
            if i == nfull - 1:
                break  # torn tail: the last complete record was half-written
            raise WriteLogError(f"write log record {i} at byte {pos} is corrupt")
        if records and rec.wnum <= records[-1].wnum:
            raise WriteLogError(f"write log record {i}: wnum {rec.wnum} not above {records[-1].wnum}")
        records.append(rec)
        pos += RECORD.size
    return header, records, pos


def read_log(path: Path) -> tuple[LogHeader | None, list[LogRecord]]:
    """Header and every complete, valid record (a torn tail is ignored)."""
    header, records, _ = _scan(Path(path).read_bytes())
    return header, records


def read_header(path: Path) -> LogHeader:
    header, _ = read_log(path)
    if header is None:
        raise WriteLogError(f"{path}: write log has no complete header")
    return header


def read_records(path: Path) -> list[LogRecord]:
    return read_log(path)[1]


def iter_records(path: Path) -> Iterator[LogRecord]:
    yield from read_records(path)


class LogWriter:
    """Appends records to a log, creating it (with its header) or continuing it.

    Opening an existing log checks that its seed and profile match, and truncates a torn tail.
    Each :meth:`append` is one ``os.write`` (no fsync: the log survives a crash of the agent,
    which is what it is for; a crash of the box loses at most a tail that nothing relied on).
    """

    def __init__(self, path: Path, seed: int, prof: Profile) -> None:
        self.path = Path(path)
        existing = self.path.read_bytes() if self.path.exists() else b""
        header, records, valid = _scan(existing)
        if header is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(self._fd, encode_header(seed, prof))
        else:
            _check_same(self.path, header, seed, prof)
            self._fd = os.open(self.path, os.O_WRONLY)
            os.ftruncate(self._fd, valid)
        os.lseek(self._fd, 0, os.SEEK_END)
        self.last_wnum = records[-1].wnum if records else 0
        self.appended = 0

    def append(self, rec: LogRecord) -> None:
        if rec.wnum <= self.last_wnum:
            raise WriteLogError(f"wnum {rec.wnum} is not above the log's last wnum {self.last_wnum}")
        os.write(self._fd, encode_record(rec))
        self.last_wnum = rec.wnum
        self.appended += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_same(path: Path, header: LogHeader, seed: int, prof: Profile) -> None:
    if header.seed != seed:
        raise ConfigError(f"{path} was written with seed {header.seed}, not {seed}: use that seed or a new log")
    if header.profile.name != prof.name or header.profile.params != prof.params:
        raise ConfigError(f"{path} uses data profile {header.profile.name} {header.profile.params}, "
                          f"not {prof.name} {prof.params}")


class LogIndex:
    """A log's records for lookups: by disk, up to a wnum, and who last wrote an offset."""

    def __init__(self, header: LogHeader, records: list[LogRecord]) -> None:
        self.header = header
        self.records = records
        self._wnums = [r.wnum for r in records]

    @classmethod
    def load(cls, path: Path) -> LogIndex:
        header, records = read_log(path)
        if header is None:
            raise WriteLogError(f"{path}: write log has no complete header")
        return cls(header, records)

    @property
    def max_wnum(self) -> int:
        return self._wnums[-1] if self._wnums else 0

    def upto(self, wnum_hi: int, disk: int | None = None) -> list[LogRecord]:
        """Records with wnum <= ``wnum_hi`` (of ``disk`` if given), in wnum order."""
        head = self.records[:bisect.bisect_right(self._wnums, wnum_hi)]
        return head if disk is None else [r for r in head if r.disk == disk]

    def last_covering(self, disk: int, offset: int, wnum_hi: int) -> LogRecord | None:
        """The last record of ``disk`` with wnum <= ``wnum_hi`` whose range holds ``offset``."""
        for rec in reversed(self.upto(wnum_hi)):
            if rec.disk == disk and rec.offset <= offset < rec.end:
                return rec
        return None

    def wnum_at(self, ack_ns: int) -> int:
        """The highest wnum acknowledged at or before ``ack_ns`` (0 if none)."""
        best = 0
        for rec in self.records:
            if rec.ack_ns <= ack_ns:
                best = rec.wnum
        return best
