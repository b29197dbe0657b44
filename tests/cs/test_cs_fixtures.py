"""The shared fixtures of tests/conftest.py: seed and cs_env."""

from __future__ import annotations

import random
import stat
from typing import Any

import pytest

from common import auth


def test_seed_is_printed_and_seeds_random(capsys: pytest.CaptureFixture[str], seed: int) -> None:
    assert f"DRLAB_SEED={seed}" in capsys.readouterr().out
    expected = random.Random(seed).random()
    assert random.random() == expected


def test_seed_env_overrides(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    monkeypatch.setenv("DRLAB_SEED", "1234")
    assert request.getfixturevalue("seed") == 1234


async def test_cs_env_shape(cs_env: Any) -> None:
    assert cs_env.url == f"https://127.0.0.1:{cs_env.service.port}" and cs_env.service.port > 0
    assert isinstance(cs_env.passphrase, auth.Passphrase)
    assert auth.read_passphrase_file(str(cs_env.passphrase_file)) == cs_env.passphrase
    assert stat.S_IMODE(cs_env.passphrase_file.stat().st_mode) == 0o600
    assert cs_env.data_dir.is_dir()
    assert await cs_env.admin.components() == [] and await cs_env.admin.disks() == []
