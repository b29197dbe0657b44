"""Damaged MT state files (mt/statefile.py): a truncated, non-JSON or wrongly typed retention floor
(``journal/{disk}/floor.json``), failover view ``meta.json`` or ``jobs_done.json`` raises
:class:`common.errors.StateError` naming the file, what is wrong and what the operator can do; the
file is left byte for byte as it was, a damaged view is logged once and skipped while the MT goes on,
and sound files (older layouts included) still open."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from mtbatches import DISK_SIZE

from common import errors, formats
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.jobs import JobRunner
from mt.view import DiskView

DISK = "cd" * 16

DAMAGED: list[tuple[bytes, str]] = [
    (b'{"format": 1, "flo', "it is not JSON, or truncated"),
    (b"", "it is not JSON, or truncated"),
    (b"\xff\xfe garbage", "it is not JSON, or truncated"),
    (b"[1, 2]", "it holds a JSON array, not an object"),
    (b'"floor"', "it holds a JSON string, not an object"),
    (b'{"format": "one"}', "its format 'one' is not a format version"),
]


def open_store(data_dir: Path) -> DiskStore:
    store = DiskStore(DISK, data_dir, Catalog(data_dir / "catalog.db"), DISK_SIZE, 1 << 30)
    store.open()
    return store


def refused(call: Any, path: Path, what: str, remedy: str) -> None:
    """``call()`` raises StateError naming ``path``, ``what`` and ``remedy``; the file is unchanged."""
    before = path.read_bytes()
    with pytest.raises(errors.StateError) as caught:
        call()
    message = caught.value.message
    assert str(path) in message and what in message and remedy in message, message
    assert caught.value.code == "damaged_state" and not caught.value.retriable
    assert path.read_bytes() == before


# -- the retention floor --------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "what"), [*DAMAGED,
                                            (b'{"format": 1, "boundary": null}', "floor is missing"),
                                            (b'{"floor": "3", "boundary": null}', "floor is '3', not an integer"),
                                            (b'{"floor": -1}', "floor is -1, not an integer >= 0"),
                                            (b'{"floor": 2, "boundary": [1]}', "boundary is [1], not null or"),
                                            (b'{"floor": 2, "boundary": "1,2"}', "boundary is '1,2'")])
def test_a_damaged_retention_floor_stops_the_disk_open_and_stays(tmp_path: Path, data: bytes, what: str) -> None:
    open_store(tmp_path).close()
    floor = tmp_path / "journal" / DISK / "floor.json"
    floor.write_bytes(data)
    store = DiskStore(DISK, tmp_path, Catalog(tmp_path / "catalog.db"), DISK_SIZE, 1 << 30)
    refused(store.open, floor, f"retention floor {floor} is damaged: {what}", "restore it from a backup")
    store.close()


def test_a_sound_floor_still_opens_and_a_newer_one_is_refused_as_before(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    floor = tmp_path / "journal" / DISK / "floor.json"
    floor.write_text(json.dumps({"floor": 1, "boundary": [1, 4]}))  # version 1 without its format field
    store = open_store(tmp_path)
    assert (store.journal.floor, store.journal.boundary) == (1, (1, 4))
    store.close()
    floor.write_text(json.dumps({"format": 2, "floor": 1, "boundary": None}))
    with pytest.raises(formats.FormatTooNew, match="retention floor"):
        open_store(tmp_path)


# -- a failover view's meta.json ------------------------------------------------------------------


def view_dir(data_dir: Path, meta: bytes) -> Path:
    directory = data_dir / "views" / DISK / "fo-1"
    directory.mkdir(parents=True)
    (directory / "meta.json").write_bytes(meta)
    for name in ("overlay.img", "overlay.log"):
        (directory / name).write_bytes(b"\x07" * 32)
    return directory


@pytest.mark.parametrize(("data", "what"), [*DAMAGED,
                                            (b'{"disk_id": "x", "seq": 2}', "gen is missing"),
                                            (b'{"disk_id": "x", "gen": 1, "seq": 2.5}', "seq is 2.5"),
                                            (b'{"disk_id": 7, "gen": 1, "seq": 2}', "disk_id is 7, not a string")])
def test_a_damaged_view_meta_is_refused_naming_the_view_and_kept(tmp_path: Path, data: bytes, what: str) -> None:
    store = open_store(tmp_path)
    try:
        directory = view_dir(tmp_path, data)
        refused(lambda: DiskView.open(store, directory), directory / "meta.json",
                f"failover view {directory / 'meta.json'} is damaged: {what}",
                f"drop the view by removing its directory {directory}")
        assert (directory / "overlay.img").read_bytes() == b"\x07" * 32
    finally:
        store.close()


async def test_a_damaged_view_is_logged_once_and_skipped_at_reattach(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    directory = view_dir(tmp_path, b'{"format": 1, "disk_id": "')
    worker = SimpleNamespace(store=store)
    try:
        with ThreadPoolExecutor(1) as pool, structlog.testing.capture_logs() as events:
            runner = JobRunner(tmp_path, {DISK: worker}.get, pool, lambda: None)  # type: ignore[arg-type,return-value]
            await runner._reattach(DISK)
            await runner._reattach(DISK)  # once per start
            await asyncio.sleep(0)
        failed = [e for e in events if e["event"] == "view_reopen_failed"]
        assert len(failed) == 1 and failed[0]["view"] == "fo-1" and "is damaged" in failed[0]["error"]
        assert runner.views == {} and (directory / "meta.json").read_bytes() == b'{"format": 1, "disk_id": "'
    finally:
        store.close()


# -- jobs_done.json ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "what"), [*DAMAGED[:3], DAMAGED[4], DAMAGED[5],
                                            (b'{"done": 5}', "done is not a list of job ids"),
                                            (b'{"done": [], "unsent": {"j": 1}}', "unsent not an object")])
def test_damaged_finished_jobs_stop_the_start_and_stay(tmp_path: Path, data: bytes, what: str) -> None:
    path = tmp_path / "jobs_done.json"
    path.write_bytes(data)
    with ThreadPoolExecutor(1) as pool:
        refused(lambda: JobRunner(tmp_path, lambda _: None, pool, lambda: None),  # type: ignore[arg-type,return-value]
                path, what, "move it aside to start without it")


def test_finished_jobs_missing_or_in_the_older_list_layout_still_load(tmp_path: Path) -> None:
    with ThreadPoolExecutor(1) as pool:
        assert JobRunner(tmp_path, lambda _: None, pool, lambda: None).done == set()  # type: ignore[arg-type,return-value]
        (tmp_path / "jobs_done.json").write_text(json.dumps(["j1", "j2"]))
        runner = JobRunner(tmp_path, lambda _: None, pool, lambda: None)  # type: ignore[arg-type,return-value]
        assert runner.done == {"j1", "j2"} and runner.unsent == {}
