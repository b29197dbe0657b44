from pathlib import Path

import pytest

from common import errors
from common.config import AgentConfig, CSConfig, PSConfig, dump_toml, load


def test_load_toml_with_units_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "ps.toml"
    path.write_text('data_dir = "/tmp/x"\ndata_port = 9555\nheartbeat_interval_s = 2.5\n')
    cfg = load(PSConfig, path, ["upload_window_batches=8"])
    assert cfg.data_dir == Path("/tmp/x")
    assert cfg.data_port == 9555
    assert cfg.heartbeat_interval_s == 2.5
    assert cfg.upload_window_batches == 8


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "ps.toml"
    path.write_text("data_prot = 9443\n")
    with pytest.raises(errors.ConfigError, match="data_prot"):
        load(PSConfig, path)


def test_bad_value_type_is_an_error() -> None:
    with pytest.raises(errors.ConfigError, match="data_port"):
        load(PSConfig, None, ["data_port=lots"])


def test_agent_disks_round_trip_through_dump(tmp_path: Path) -> None:
    data = {"data_dir": "d", "disks": [{"name": "disk0", "path": "d0.img", "size_bytes": 1048576}]}
    path = tmp_path / "agent.toml"
    path.write_text(dump_toml(data))
    cfg = load(AgentConfig, path)
    assert cfg.disks[0].name == "disk0"
    assert cfg.disks[0].size_bytes == 1048576
    assert cfg.disks[0].path == Path("d0.img")


def test_cs_default_database_is_sqlite_in_data_dir() -> None:
    cfg = CSConfig(data_dir=Path("/srv/cs"))
    assert cfg.database_url() == "sqlite+aiosqlite:////srv/cs/cs.db"
