"""Fixtures of the CS tests: ``site``, a CS (on each engine, see tests/conftest.py) with helpers to
enrol components through the real registration (tests/cs/cshelpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cshelpers import Site


@pytest.fixture
async def site(cs_env: Any, tmp_path: Path) -> AsyncIterator[Site]:
    s = Site(cs_env, tmp_path)
    try:
        yield s
    finally:
        await s.close()
