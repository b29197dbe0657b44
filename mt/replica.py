"""A disk's replica image: a sparse file as large as the protected disk, written in place."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_exact(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset`` (zeros past the end of the file, as a sparse disk reads)."""
    parts: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            parts.append(bytes(length - got))
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def write_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class Replica:
    """Open replica image of one disk (blocking calls: use from a worker thread)."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.size_bytes = 0
        self.ensure_size(size_bytes)
        if created:
            os.fsync(self.fd)
            fsync_dir(path.parent)

    def __repr__(self) -> str:
        return f"Replica({self.path}, size_bytes={self.size_bytes})"

    def ensure_size(self, size_bytes: int) -> None:
        """Grow (never shrink) the sparse image to ``size_bytes``."""
        current = os.fstat(self.fd).st_size
        if size_bytes > current:
            os.ftruncate(self.fd, size_bytes)
            os.fsync(self.fd)
        self.size_bytes = max(current, size_bytes)

    def read(self, offset: int, length: int) -> bytes:
        return read_exact(self.fd, length, offset)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        write_all(self.fd, data, offset)

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
