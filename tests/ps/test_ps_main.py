from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.daemon import parse_args
from ps.__main__ import main


def test_args() -> None:
    argv = ["--config", "ps.toml", "--set", "data_port=0", "--set", "upload_threads=3"]
    args = parse_args("ps", "drlab process server", argv)
    assert args.config == Path("ps.toml") and args.overrides == ["data_port=0", "upload_threads=3"]


def test_unknown_config_key_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "ps.toml"
    cfg.write_text('data_dir = "x"\nno_such_key = 1\n')
    assert main(["--config", str(cfg)]) == 2


def test_unregistered_without_passphrase_fails_cleanly(tmp_path: Path) -> None:
    cfg = tmp_path / "ps.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\nlisten_host = "127.0.0.1"\ndata_port = 0\n')
    proc = subprocess.run([sys.executable, "-m", "ps", "--config", str(cfg)], capture_output=True, text=True,
                          timeout=30, cwd=Path(__file__).resolve().parents[2], check=False)
    assert proc.returncode == 1
    assert "passphrase_file" in proc.stderr
