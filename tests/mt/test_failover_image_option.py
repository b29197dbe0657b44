"""A failover job is done once its view is made: without ``image`` no image file is written, the
result names the view's NBD URL (no ``image_path``) and the view, read over NBD, is the disk at
the point and takes writes; with ``"image": true`` the job writes the image as before; a
``view-image`` job exports a view later, as it is (its writes included); a settings entry whose
``image`` is not a boolean is ignored (no job runs)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from test_mt_service import DISK, World, wait_until, world  # noqa: F401  (the MT in-process)
from test_viewnbd import free_port, succeeded

from common import errors
from common.nbdclient import NbdClient
from mt.service import MTService
from mt.settings import Job

pytestmark = pytest.mark.timeout(60)


async def nbd_world(w: World) -> None:
    """Restart the MT with its NBD server of views on, then 3 batches applied."""
    await w.mt.stop()
    w.cfg = dataclasses.replace(w.cfg, view_nbd_port=free_port())
    w.mt = MTService(w.cfg)
    await w.mt.start()
    await w.mt.wait_settings()
    for _ in range(3):
        assert (await w.send_next())[0] == 201
    store = w.mt.workers[DISK].store
    await wait_until(lambda: store.applied == (1, 3))


def images_dir(w: World) -> list[str]:
    d = w.cfg.data_dir / "failover" / DISK
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


async def test_without_image_the_job_is_done_at_the_view_and_writes_no_file(world: World) -> None:  # noqa: F811
    await nbd_world(world)
    jobs: list[dict[str, Any]] = [{"job_id": "fo", "kind": "failover", "disk_id": DISK, "point": {"gen": 1, "seq": 2}}]
    world.cs.publish(world.document(jobs=jobs))
    await wait_until(lambda: "fo" in world.cs.results)
    result = succeeded(world, "fo")
    assert "image_path" not in result and images_dir(world) == []
    assert (result["point"]["gen"], result["point"]["seq"]) == (1, 2)
    assert result["view"]["ready_s"] > 0 and "image_s" not in result["view"]
    async with NbdClient.from_url(result["nbd_url"]) as nbd:
        assert await nbd.read(0, nbd.size_bytes) == world.maker.images[(1, 2)]
        await nbd.write(4096, b"the failed-over machine")
        await nbd.flush()
        expected = bytearray(world.maker.images[(1, 2)])
        expected[4096:4096 + 23] = b"the failed-over machine"
        assert await nbd.read(0, nbd.size_bytes) == bytes(expected)
    # later, an export of the view as it is (its write included); the view stays served
    jobs.append({"job_id": "exp", "kind": "view-image", "disk_id": DISK, "point": {"view": "fo"}})
    world.cs.publish(world.document(jobs=jobs))
    await wait_until(lambda: "exp" in world.cs.results)
    export = succeeded(world, "exp")
    assert export["view"] == "fo" and images_dir(world) == ["exp.img"]
    assert (world.cfg.data_dir / "failover" / DISK / "exp.img").read_bytes() == bytes(expected)
    async with NbdClient.from_url(result["nbd_url"]) as nbd:
        assert await nbd.read(4096, 23) == b"the failed-over machine"


async def test_with_image_the_job_writes_the_image_of_the_point(world: World) -> None:  # noqa: F811
    await nbd_world(world)
    world.cs.publish(world.document(jobs=[{"job_id": "fo", "kind": "failover", "disk_id": DISK,
                                           "point": {"gen": 1, "seq": 2}, "image": True}]))
    await wait_until(lambda: "fo" in world.cs.results)
    result = succeeded(world, "fo")
    assert images_dir(world) == ["fo.img"] and result["image_path"].endswith("/fo.img")
    assert (world.cfg.data_dir / "failover" / DISK / "fo.img").read_bytes() == world.maker.images[(1, 2)]
    assert result["view"]["image_s"] > 0 and result["nbd_url"].endswith("/fo")
    async with NbdClient.from_url(result["nbd_url"]) as nbd:
        assert await nbd.read(0, nbd.size_bytes) == world.maker.images[(1, 2)]


async def test_an_export_of_no_view_fails_and_writes_nothing(world: World) -> None:  # noqa: F811
    await nbd_world(world)
    world.cs.publish(world.document(jobs=[{"job_id": "exp", "kind": "view-image", "disk_id": DISK,
                                           "point": {"view": "nope"}}]))
    await wait_until(lambda: "exp" in world.cs.results)
    (reply,) = world.cs.results["exp"]
    assert reply["state"] == "failed" and "no failover view nope" in reply["error"]
    assert images_dir(world) == []


@pytest.mark.parametrize("image", ["yes", 1, None, [True]])
def test_a_settings_entry_with_a_bad_image_is_refused(image: Any) -> None:
    with pytest.raises(errors.BadRequest, match="bad job entry"):
        Job.from_doc({"job_id": "j", "kind": "failover", "disk_id": DISK, "image": image})
    assert Job.from_doc({"job_id": "j", "disk_id": DISK}).image is False
    assert Job.from_doc({"job_id": "j", "disk_id": DISK, "image": True}).image is True
