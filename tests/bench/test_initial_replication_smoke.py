"""The initial replication benchmark runs end to end on its quick disk (256 MiB) and reports what it
promises: both references timed in the same run, the ratios computed from the figures, a copy
initial replication that sent the written bytes, a checksum resync that compared the whole disk
and sent exactly the hash blocks holding the changed blocks, and the oracle's byte-exact verdict."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from bench import initial_replication as ir


@pytest.mark.timeout(90)
def test_initial_replication_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="drlab-irs-"))  # short: the agent's socket lives below
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    try:
        assert ir.main(["--quick", "--seed", "7", "--out", str(tmp_path)]) == 0
        assert list(scratch.iterdir()) == []  # its temporary directory is gone
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    [json_file] = tmp_path.glob("initial_replication-*-quick.json")
    [md_file] = tmp_path.glob("initial_replication-*-quick.md")
    rep = json.loads(json_file.read_text())
    size, written = rep["disk_bytes"], rep["written_bytes"]
    assert size == ir.QUICK_MIB << 20 and written == size // 2 and rep["seed"] == 7 and rep["sigkilled"] == []

    refs, r = rep["references"], rep["ratios"]
    ref_ir = rep["initial_replication"]
    assert ref_ir["seconds"] > 0 and ref_ir["mode"] == "copy" and ref_ir["bytes_sent"] == written
    for name in ("cp", "nbdcopy"):
        if refs[name].get("absent"):
            assert shutil.which(name) is None and f"ir_to_{name}_time" not in r
            continue
        assert refs[name]["seconds"] > 0 and 0 < refs[name]["allocated_bytes"] <= written
        assert r[f"ir_to_{name}_time"] == round(ref_ir["seconds"] / refs[name]["seconds"], 2)
    assert r["ir_mb_per_s_written"] == round(written / ref_ir["seconds"] / 1e6, 1)

    rs = rep["resync"]
    assert rs["mode"] == "checksum" and rs["bytes_compared"] == size and not rs["restart_resynced"]
    assert rs["blocks_changed"] == round(size // ir.DIFF_BLOCK * ir.DIFF_SHARE)
    assert rs["differing_bytes"] == rs["blocks_changed"] * ir.DIFF_BLOCK
    assert rs["differing_bytes"] <= rs["bytes_sent"] == rs["hash_granular_bytes"]
    assert rs["sent_to_differing"] == round(rs["bytes_sent"] / rs["differing_bytes"], 3)
    assert rs["seconds"] > 0 and r["resync_to_ir_time"] == round(rs["seconds"] / ref_ir["seconds"], 3)
    equal = rep["resync_equal"]
    assert (equal["mode"], equal["bytes_compared"], equal["bytes_sent"]) == ("checksum", size, 0)
    assert equal["generation"] == 2 and rs["generation"] == 3 and equal["seconds"] > 0
    assert r["resync_to_equal_resync_time"] == round(rs["seconds"] / equal["seconds"], 3)

    assert rep["oracle"]["ok"] and rep["oracle"]["workload_writes"] > 0
    table = md_file.read_text()
    assert table.startswith("### Initial replication and resync") and "byte-exact" in table
    assert table in capsys.readouterr().out


def test_changed_blocks_are_seeded_and_counted_per_hash_block() -> None:
    size = 64 << 20
    a, b = ir.choose_blocks(size, 1), ir.choose_blocks(size, 1)
    assert a == b != ir.choose_blocks(size, 2) and len(a) == 10 and a == sorted(set(a))
    assert all(o % ir.DIFF_BLOCK == 0 and o < size for o in a)
    assert ir.hash_blocks([0, 65536, 1 << 20], 65536, 1 << 20) == 2
    assert ir.hash_blocks([(1 << 20) - 4096], 8192, 1 << 20) == 2  # straddles two hash blocks
