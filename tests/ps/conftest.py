"""Fixtures of the PS tests: ``world``, the PS's hypervisor work (tests/ps/pshv.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pshv import HvWorld, hv_world


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[HvWorld]:
    async with hv_world(tmp_path) as w:
        yield w
