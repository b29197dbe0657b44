"""Small size-limited directories for disk-full tests: a tmpfs mounted with ``size=``.

``sized_dir(tmp_path, "256k")`` is a context manager yielding a directory on its own tmpfs of that
size (unmounted afterwards, even when the test fails). Mounting needs root (CI runs as root): when
the mount is not permitted the test is skipped, and the reason is printed. ``fill(directory)``
takes every free byte with a filler file (delete it to give the space back).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def sized_dir(tmp_path: Path, size: str, name: str = "sized") -> Iterator[Path]:
    """A directory of ``size`` bytes (tmpfs syntax: ``64k``, ``4m``) under ``tmp_path``."""
    mount_point = tmp_path / name
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = f"cannot mount a size-limited tmpfs (uid {os.getuid()}): {done.stderr.strip() or done.returncode}"
        print(why)
        pytest.skip(why)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True)


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def fill(directory: Path, keep_bytes: int = 0, name: str = "filler") -> Path:
    """Write a filler file until at most ``keep_bytes`` stay free; returns its path."""
    path = directory / name
    with open(path, "ab") as f:
        chunk = b"\xaa" * 4096
        while free_bytes(directory) > keep_bytes:
            try:
                f.write(chunk[: max(1, min(len(chunk), free_bytes(directory) - keep_bytes))])
                f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return path
