"""A protected disk: a sparse image file the workload writes through the agent.

Reads and writes are bounds-checked before they touch the file: a request outside the disk
raises :class:`DiskBoundsError` and changes nothing. A write that fails after some of its bytes
reached the file (ENOSPC, EIO after a short write) raises :class:`TornWrite`: the range then
holds an unknown mix of old and new bytes, and the caller must track it (agent/replication.py);
a write that fails before any byte was written raises the plain OSError and changed nothing.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from common import logging as dlog
from common.errors import ConfigError

log = dlog.get("drlab.agent.disk")


class DiskBoundsError(ValueError):
    """A read or write that does not fit inside the disk."""


class WritesStopped(ValueError):
    """The machine is shut down for a planned failover: it takes no more writes."""


class TornWrite(OSError):
    """A write that failed part-way: ``done`` of its bytes had reached the image file."""

    def __init__(self, cause: OSError, done: int) -> None:
        super().__init__(cause.errno or errno.EIO, f"{cause.strerror or cause} after {done} bytes")
        self.done = done


class DiskImage:
    def __init__(self, path: Path, size_bytes: int, name: str = "") -> None:
        if size_bytes <= 0:
            raise ConfigError(f"disk {name or path}: size_bytes must be > 0")
        self.path = Path(path)
        self.size_bytes = size_bytes
        self.name = name or self.path.stem
        self._fd = _open_sized(self.path, size_bytes)
        self.bytes_written = 0  # by clients, since start (the agent reports churn from it)
        self.limit_bytes = size_bytes  # requests must end within this: less once shrunk (agent/resizewatch.py)

    def __repr__(self) -> str:
        return f"DiskImage({self.name}, {self.path}, {self.size_bytes})"

    def check(self, offset: int, length: int) -> None:
        limit = min(self.size_bytes, self.limit_bytes)
        if offset < 0 or length < 0 or offset + length > limit:
            raise DiskBoundsError(f"[{offset}, +{length}) is outside disk {self.name} of {limit} bytes")

    def file_size(self) -> int:
        """The image file's size now (differs from ``size_bytes`` once the disk was resized)."""
        return os.fstat(self._fd).st_size

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.check(offset, len(data))
        view, done = memoryview(data), 0
        try:
            while view:  # a short write is continued
                written = os.pwrite(self._fd, view, offset)
                if written <= 0:
                    raise OSError(errno.EIO, "the disk image took no bytes")
                view, offset, done = view[written:], offset + written, done + written
        except OSError as exc:
            self.bytes_written += done
            if done:
                raise TornWrite(exc, done) from exc
            raise
        self.bytes_written += len(data)

    def pread(self, offset: int, length: int) -> bytes:
        self.check(offset, length)
        parts: list[bytes] = []
        while length > 0:
            chunk = os.pread(self._fd, length, offset)
            if not chunk:  # cannot happen inside the file size; zero-fill to be safe
                chunk = bytes(length)
            parts.append(chunk)
            offset, length = offset + len(chunk), length - len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def next_data(self, offset: int) -> int:
        """The first offset >= ``offset`` that may hold data (holes read as zeros); size if none."""
        if offset >= self.size_bytes:
            return self.size_bytes
        try:
            return min(os.lseek(self._fd, offset, os.SEEK_DATA), self.size_bytes)
        except OSError:  # ENXIO: no data after offset; EINVAL: SEEK_DATA unsupported
            return self.size_bytes if _no_data_after(self._fd, offset) else offset

    def fsync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _no_data_after(fd: int, offset: int) -> bool:
    try:
        os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        return exc.errno == errno.ENXIO
    return False


def _open_sized(path: Path, size_bytes: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    current = os.fstat(fd).st_size
    if current > size_bytes:
        os.close(fd)
        raise ConfigError(f"disk image {path} is {current} bytes, larger than size_bytes {size_bytes}")
    if current < size_bytes:
        os.ftruncate(fd, size_bytes)
        log.info("disk_image_sized", path=str(path), old_bytes=current, size_bytes=size_bytes)
    return fd
