"""The compose file is validated (no Docker engine runs here): it must parse and name
every daemon with the ports the architecture gives them."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_compose_file_is_valid() -> None:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: `make test` installs it (apt-get install docker-compose)"
    proc = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True,
                          timeout=50, check=False)
    assert proc.returncode == 0, proc.stderr
    for service in ("cs:", "mt:", "ps:", "m1:"):
        assert f"  {service}" in proc.stdout
    assert "published: 443" in proc.stdout or "443:443" in proc.stdout


def test_compose_configs_load_as_typed_configs() -> None:
    from common.config import AgentConfig, CSConfig, MTConfig, PSConfig, load

    d = ROOT / "deploy" / "compose"
    assert load(CSConfig, d / "cs.toml").port == 443
    assert load(MTConfig, d / "mt.toml").control_port == 9080
    assert load(PSConfig, d / "ps.toml").data_port == 9443
    assert load(AgentConfig, d / "agent.toml").disks[0].size_bytes == 256 * 1024 * 1024
