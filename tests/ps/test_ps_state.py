from __future__ import annotations

import base64

import pytest

from common import errors
from ps.state import DiskProgress, DiskSettings, Registry

KEY = bytes(range(32))


def entry(disk_id: str = "ab" * 16, gen: int = 1, **kw: object) -> dict[str, object]:
    item: dict[str, object] = {"disk_id": disk_id, "machine_id": "m" * 32, "generation": gen, "size_bytes": 1 << 20,
                               "mt_url": "https://127.0.0.1:1", "mt_control_url": "https://127.0.0.1:2",
                               "key_epoch": 1, "key_b64": base64.b64encode(KEY).decode()}
    item.update(kw)
    return item


def test_settings_parse_and_hide_key() -> None:
    disk = DiskSettings.from_doc(entry())
    assert disk.key == KEY and disk.disk_id_bytes == bytes.fromhex("ab" * 16)
    assert KEY.hex() not in repr(disk) and base64.b64encode(KEY).decode() not in repr(disk)
    with pytest.raises(errors.BadRequest):
        DiskSettings.from_doc(entry(key_b64="!!"))


def test_registry_reports_changes_and_skips_bad_entries() -> None:
    reg = Registry()
    assert reg.apply_document({"disks": [entry(), entry("cd" * 16, disk_id_extra=1)]}) == {"ab" * 16, "cd" * 16}
    assert reg.apply_document({"disks": [entry(), entry("cd" * 16)]}) == set()
    assert reg.apply_document({"disks": [entry(gen=2), entry("zz")]}) == {"ab" * 16, "cd" * 16}
    assert set(reg.disks) == {"ab" * 16} and reg.disks["ab" * 16].generation == 2


def test_generation_is_the_newest_known() -> None:
    reg = Registry()
    reg.apply_document({"disks": [entry(gen=3)]})
    assert reg.generation("ab" * 16) == 3
    reg.progress_of("ab" * 16).stored(4, 1)
    assert reg.generation("ab" * 16) == 4


def test_progress_per_generation() -> None:
    p = DiskProgress()
    p.stored(1, 5)
    p.stored(1, 3)
    assert (p.ps_gen, p.ps_durable) == (1, 5)
    p.observe_mt(1, 4, 2)
    p.observe_mt(1, 3, 1)  # an older reply never moves progress back
    assert p.mt_of(1) == (4, 2) and p.mt_of(2) == (0, 0)
    assert p.unapplied(1)
    p.observe_mt(1, 5, 5)
    assert not p.unapplied(1)
    p.stored(2, 1)
    assert p.unapplied(2) and (p.ps_gen, p.ps_durable) == (2, 1)
    p.observe_mt(2, 1, 0)
    assert p.mt_of(1) == (0, 0) and p.mt_of(2) == (1, 0)
