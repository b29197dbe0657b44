"""Just after a restart the MT serves before the CS's settings document arrives: a PS must get a
retriable 503 then (it cannot yet be told the disk is not held), 404 only once settings say so."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any, cast

import pytest

from common import errors
from common.config import MTConfig
from common.tls import Identity
from mt.ingest import IngestContext, disk_for
from mt.settings import Registry
from mt.worker import DiskWorker

DISK = "cd" * 16
PS = Identity("11" * 16, "ps", 1)
ADMIN = Identity("aa" * 16, "admin", 2)


def document(*disk_ids: str) -> dict[str, Any]:
    return {"disks": [{"disk_id": d, "ps_id": PS.component_id, "generation": 1, "size_bytes": 1 << 20,
                       "key_epoch": 1, "key_b64": base64.b64encode(os.urandom(32)).decode()} for d in disk_ids]}


def context(tmp_path: Path, held: bool = True) -> IngestContext:
    cfg = MTConfig(data_dir=tmp_path, cs_url="https://127.0.0.1:1", data_port=0, control_port=0)
    workers = {DISK: cast(DiskWorker, object())} if held else {}
    return IngestContext(cfg, Registry(), workers, None)


@pytest.mark.parametrize("held", [True, False])
def test_before_the_first_settings_a_ps_gets_503_not_404(tmp_path: Path, held: bool) -> None:
    ctx = context(tmp_path, held)
    with pytest.raises(errors.Unavailable) as caught:
        disk_for(ctx, DISK, PS)
    assert caught.value.retriable and caught.value.status == 503
    assert not ctx.registry.loaded


def test_once_settings_are_applied_the_disk_is_served(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    ctx.registry.apply(ctx.registry.parse(document(DISK)), document(DISK))
    disk, worker = disk_for(ctx, DISK, PS)
    assert disk is not None and disk.disk_id == DISK and worker is ctx.workers[DISK]


def test_once_settings_are_applied_an_unlisted_disk_is_404(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    ctx.registry.apply({}, {"disks": []})
    with pytest.raises(errors.NotFound):
        disk_for(ctx, DISK, PS)
    with pytest.raises(errors.NotFound):
        disk_for(context(tmp_path, held=False), DISK, ADMIN)  # an admin never waits on the settings


def test_an_admin_reads_a_held_disk_before_the_settings(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    disk, worker = disk_for(ctx, DISK, ADMIN)
    assert disk is None and worker is ctx.workers[DISK]
