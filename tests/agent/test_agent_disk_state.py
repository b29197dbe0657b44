"""Disk images (bounds, sparse creation) and the persisted sequence state."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.disk import DiskBoundsError, DiskImage
from agent.state import AgentState, DiskState, StateStore
from common.errors import ConfigError


def test_image_is_created_sparse_at_its_size(tmp_path: Path) -> None:
    disk = DiskImage(tmp_path / "d" / "disk.img", 8 << 20, "d0")
    assert (tmp_path / "d" / "disk.img").stat().st_size == 8 << 20
    assert disk.pread(4096, 16) == bytes(16)
    disk.close()


def test_write_read_and_bounds(tmp_path: Path) -> None:
    disk = DiskImage(tmp_path / "disk.img", 1 << 16)
    disk.pwrite(100, b"hello")
    assert disk.pread(98, 9) == b"\0\0hello\0\0"
    for offset, length in [(1 << 16, 1), ((1 << 16) - 2, 3), (-1, 2)]:
        with pytest.raises(DiskBoundsError):
            disk.pwrite(offset, b"x" * length)
    with pytest.raises(DiskBoundsError):
        disk.pread((1 << 16) - 1, 2)
    assert (tmp_path / "disk.img").stat().st_size == 1 << 16  # nothing grew
    disk.close()


def test_next_data_skips_holes(tmp_path: Path) -> None:
    disk = DiskImage(tmp_path / "disk.img", 64 << 20)
    assert disk.next_data(0) in (0, 64 << 20)  # a filesystem without SEEK_DATA says "maybe at 0"
    disk.pwrite(32 << 20, b"x")
    assert disk.next_data(0) <= 32 << 20  # never past the data
    assert disk.next_data((32 << 20) + 1) == (32 << 20) + 1  # inside data: right here
    assert disk.next_data(40 << 20) in (40 << 20, 64 << 20)  # after the last data: the end (or "maybe here")
    assert disk.next_data(64 << 20) == 64 << 20
    disk.close()


def test_a_larger_existing_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "disk.img").write_bytes(b"x" * 8192)
    with pytest.raises(ConfigError):
        DiskImage(tmp_path / "disk.img", 4096)
    disk = DiskImage(tmp_path / "disk.img", 16384)  # a smaller one grows, keeping its data
    assert disk.pread(0, 2) == b"xx" and disk.pread(8192, 2) == b"\0\0"
    disk.close()


def test_state_round_trip_and_defaults(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    fresh = store.load()
    assert fresh.clean_shutdown and fresh.disks == {}
    state = AgentState(clean_shutdown=False, disks={"d0": DiskState("ab" * 16, "d0", generation=3, next_seq=42,
                                                                      resync_done_seq=7, resync_offset=4096)})
    store.save(state)
    again = store.load()
    assert again == state
    assert not (tmp_path / "state.json.tmp").exists()


def test_an_unchanged_state_is_not_written_again(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = AgentState(clean_shutdown=False, disks={"d0": DiskState("ab" * 16, "d0", generation=1, next_seq=5)})
    store.save(state)
    mtime = (tmp_path / "state.json").stat().st_mtime_ns
    store.save(state)  # e.g. a settings document that changes nothing here
    assert store.writes == 1 and (tmp_path / "state.json").stat().st_mtime_ns == mtime
    state.disks["d0"].next_seq = 6
    store.save(state)
    assert store.writes == 2 and StateStore(tmp_path).load() == state
    reopened = StateStore(tmp_path)
    reopened.save(reopened.load())  # what was read is what is on disk: nothing to write
    assert reopened.writes == 0


def test_state_of_an_unknown_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"version": 99, "disks": []}')
    with pytest.raises(ValueError):
        StateStore(tmp_path).load()
