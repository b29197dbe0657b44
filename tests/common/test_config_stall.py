"""ComponentConfig.stall_timeout_s (common/config.py): > 0 and at most request_timeout_s, checked
by every daemon's config; the default follows a shorter request timeout down."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import AgentConfig, ComponentConfig, MTConfig, PSConfig, load
from common.errors import ConfigError


def test_the_default_is_ten_seconds_and_follows_a_shorter_request_timeout() -> None:
    assert ComponentConfig().stall_timeout_s == 10.0
    assert PSConfig(request_timeout_s=5.0).stall_timeout_s == 5.0
    assert AgentConfig(request_timeout_s=60.0, stall_timeout_s=2.5).stall_timeout_s == 2.5


@pytest.mark.parametrize("cls", [ComponentConfig, PSConfig, MTConfig, AgentConfig])
@pytest.mark.parametrize("stall", [0.0, -1.0, 31.0])
def test_a_stall_timeout_out_of_range_is_refused(cls: type[ComponentConfig], stall: float) -> None:
    with pytest.raises(ConfigError, match=r"stall_timeout_s .* must be > 0 and at most request_timeout_s 30"):
        cls(stall_timeout_s=stall)


def test_a_config_file_or_override_with_a_bad_stall_timeout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("request_timeout_s = 4.0\nstall_timeout_s = 6.0\n")
    with pytest.raises(ConfigError, match="stall_timeout_s 6.0 must be > 0 and at most request_timeout_s 4.0"):
        load(AgentConfig, path)
    with pytest.raises(ConfigError, match="stall_timeout_s"):
        load(PSConfig, None, ["stall_timeout_s=0"])
    assert load(MTConfig, None, ["stall_timeout_s=0.5"]).stall_timeout_s == 0.5
