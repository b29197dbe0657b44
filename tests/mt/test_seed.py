"""Seeds (mt/seed.py): only a path inside the datastore is adopted; adopting drops the disk's old
points, views, journal and staging, and the store then opens the adopted file as it is (never
truncated, grown to size); deleting the disk's files removes only the note naming an adopted file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mtbatches import DISK_SIZE, BatchMaker
from test_mt_service import DISK, World, wait_until
from test_mt_service import world as mt_world  # noqa: F401  (the fixture, by this name)

from common import errors
from mt import release, seed
from mt.apply import DiskStore
from mt.catalog import Catalog
from mt.service import MTService


def open_store(data_dir: Path, catalog: Catalog, size: int = DISK_SIZE) -> DiskStore:
    store = DiskStore(DISK, data_dir, catalog, size, 1 << 30)
    store.open()
    return store


def store_with_points(data_dir: Path, catalog: Catalog, batches: int = 3) -> DiskStore:
    store = open_store(data_dir, catalog)
    maker = BatchMaker(bytes.fromhex(DISK), seed=9)
    for _ in range(batches):
        assert store.receive(maker.gen, maker.seq + 1, maker.make())
        assert store.apply_next() is not None
    return store


def test_allowed_inside_the_datastore(tmp_path: Path) -> None:
    store = tmp_path / "ds"
    (store / "vm").mkdir(parents=True)
    assert seed.allowed(str(store / "vm" / "disk.img"), store) == (store / "vm" / "disk.img").resolve()
    assert seed.allowed(str(store / "vm" / ".." / "d2.img"), store) == (store / "d2.img").resolve()


@pytest.mark.parametrize("path", ["/etc/passwd", "{ds}/../outside.img", "{ds}x/disk.img", "{tmp}/outside.img"])
def test_refused_outside_the_datastore(tmp_path: Path, path: str) -> None:
    store = tmp_path / "ds"
    store.mkdir()
    with pytest.raises(errors.Forbidden):
        seed.allowed(path.format(ds=store, tmp=tmp_path), store)


def test_refused_through_a_symlink_escaping_the_datastore(tmp_path: Path) -> None:
    store, outside = tmp_path / "ds", tmp_path / "secret"
    store.mkdir()
    outside.mkdir()
    (outside / "disk.img").write_bytes(b"x")
    (store / "link").symlink_to(outside)
    (store / "file-link.img").symlink_to(outside / "disk.img")
    for path in (store / "link" / "disk.img", store / "file-link.img"):
        with pytest.raises(errors.Forbidden):
            seed.allowed(str(path), store)


def test_refused_without_a_datastore(tmp_path: Path) -> None:
    with pytest.raises(errors.Forbidden):
        seed.allowed(str(tmp_path / "disk.img"), None)


def test_adopt_drops_points_dirs_and_writes_the_marker(tmp_path: Path) -> None:
    data_dir, target = tmp_path / "mt", tmp_path / "ds" / "disk.img"
    target.parent.mkdir()
    target.write_bytes(b"seed" * 1024)
    catalog = Catalog(data_dir / "catalog.db")
    store = store_with_points(data_dir, catalog)
    for sub in ("views", "staging"):
        (data_dir / sub / DISK).mkdir(parents=True, exist_ok=True)
    store.close()
    assert catalog.all(DISK) and (data_dir / "journal" / DISK).is_dir()
    assert seed.needs_adopt(data_dir, DISK, target.resolve())
    seed.adopt(data_dir, DISK, target.resolve(), catalog)
    assert catalog.all(DISK) == []
    assert not any((data_dir / sub / DISK).exists() for sub in ("views", "journal", "staging"))
    assert seed.marker(data_dir, DISK).read_text() == str(target.resolve())
    assert seed.replica_file(data_dir, DISK) == target.resolve()
    assert not seed.needs_adopt(data_dir, DISK, target.resolve())
    assert (data_dir / "replicas" / f"{DISK}.img").exists()  # the MT's own image is left alone
    seed.adopt(data_dir, DISK, target.resolve(), catalog)  # repeating it is safe
    assert seed.replica_file(data_dir, DISK) == target.resolve()


@pytest.mark.parametrize("existing", [DISK_SIZE, DISK_SIZE // 2])
def test_store_opens_the_adopted_file_unchanged(tmp_path: Path, existing: int) -> None:
    data_dir, target = tmp_path / "mt", tmp_path / "ds" / "disk.img"
    target.parent.mkdir()
    content = os.urandom(existing)
    target.write_bytes(content)
    catalog = Catalog(data_dir / "catalog.db")
    store_with_points(data_dir, catalog).close()
    seed.adopt(data_dir, DISK, target.resolve(), catalog)
    store = open_store(data_dir, catalog)
    try:
        assert store.replica.path == target.resolve() and store.applied == (0, 0)
        assert store.replica.size_bytes == DISK_SIZE
        assert store.replica.read(0, existing) == content
    finally:
        store.close()
    data = target.read_bytes()
    assert len(data) == DISK_SIZE and data[:existing] == content
    assert data[existing:] == bytes(DISK_SIZE - existing)  # grown, zero-filled


def test_store_never_truncates_a_larger_adopted_file(tmp_path: Path) -> None:
    data_dir, target = tmp_path / "mt", tmp_path / "ds" / "disk.img"
    target.parent.mkdir()
    content = os.urandom(2 * DISK_SIZE)
    target.write_bytes(content)
    seed.adopt(data_dir, DISK, target.resolve(), Catalog(data_dir / "catalog.db"))
    open_store(data_dir, Catalog(data_dir / "catalog.db")).close()
    assert target.read_bytes() == content


def test_delete_files_removes_the_note_not_the_adopted_file(tmp_path: Path) -> None:
    data_dir, target = tmp_path / "mt", tmp_path / "ds" / "disk.img"
    target.parent.mkdir()
    target.write_bytes(b"keep me" * 100)
    catalog = Catalog(data_dir / "catalog.db")
    seed.adopt(data_dir, DISK, target.resolve(), catalog)
    store_with_points(data_dir, catalog, batches=2).close()
    assert catalog.all(DISK)
    assert release.delete_files(data_dir, catalog, DISK)
    assert not seed.marker(data_dir, DISK).exists() and catalog.all(DISK) == []
    assert target.exists() and target.stat().st_size == DISK_SIZE
    assert target.read_bytes()[:700] == b"keep me" * 100
    assert seed.replica_file(data_dir, DISK) == data_dir / "replicas" / f"{DISK}.img"


# -- MTService: the settings document's replica_path --------------------------------------------


def _with_path(world: World, path: str, serial: int = 0) -> dict[str, object]:
    doc = world.document()
    doc["disks"][0]["replica_path"] = path
    doc["revoked_serials"] = [serial]  # tells one publication from another
    return doc


async def _settled(world: World, path: str, serial: int = 0) -> None:
    """Wait until the MT applied the document naming ``path`` (the registry is updated last)."""
    await wait_until(lambda: DISK in world.mt.registry.disks and serial in world.mt.registry.revoked
                     and world.mt.registry.disks[DISK].replica_path == path)


async def _applied(world: World, n: int) -> None:
    for _ in range(n):
        assert (await world.send_next())[0] == 201
    await wait_until(lambda: world.mt.workers[DISK].store.applied == (1, n))


async def test_service_adopts_a_replica_path_inside_the_datastore(mt_world: World, tmp_path: Path) -> None:  # noqa: F811
    world = mt_world
    store_dir = tmp_path / "datastore"
    store_dir.mkdir()
    world.cfg.datastore_dir = store_dir
    target = store_dir / "vm-disk.img"
    content = os.urandom(DISK_SIZE)
    target.write_bytes(content)
    await _applied(world, 2)
    old = world.mt.workers[DISK]
    world.cs.publish(_with_path(world, str(target)))
    await _settled(world, str(target))
    assert world.mt.workers[DISK] is not old
    store = world.mt.workers[DISK].store
    assert store.replica.path == target.resolve() and store.applied == (0, 0)
    assert world.mt.catalog is not None and world.mt.catalog.all(DISK) == []
    assert target.read_bytes() == content
    assert not release.is_released(world.cfg.data_dir, DISK)
    world.cs.publish(_with_path(world, str(target), serial=7))  # the same path again: nothing adopted again
    await _settled(world, str(target), serial=7)
    assert world.mt.workers[DISK].store is store
    await wait_until(lambda: any(h.get("datastore_dir") == str(store_dir.resolve()) for h in world.cs.heartbeats))
    await world.mt.stop()  # a restart reopens the disk on the adopted file, still unchanged
    world.mt = MTService(world.cfg)
    await world.mt.start()
    await world.mt.wait_settings()
    await _settled(world, str(target), serial=7)
    assert world.mt.workers[DISK].store.replica.path == target.resolve()
    assert target.read_bytes() == content


async def test_service_refuses_a_replica_path_outside_the_datastore(mt_world: World, tmp_path: Path) -> None:  # noqa: F811
    world = mt_world
    store_dir, outside = tmp_path / "datastore", tmp_path / "elsewhere.img"
    store_dir.mkdir()
    outside.write_bytes(b"do not touch")
    world.cfg.datastore_dir = store_dir
    await _applied(world, 2)
    worker = world.mt.workers[DISK]
    world.cs.publish(_with_path(world, str(outside)))
    await _settled(world, str(outside))
    assert world.mt.workers[DISK] is worker and worker.store.applied == (1, 2)
    assert not seed.marker(world.cfg.data_dir, DISK).exists()
    assert world.mt.catalog is not None and len(world.mt.catalog.all(DISK)) == 2
    assert outside.read_bytes() == b"do not touch"
