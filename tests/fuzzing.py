"""Shared pieces of the codec fuzz tests (hypothesis): a replayable seed, mutations of valid
encodings, and a bound on what a parser may allocate.

- Seed: ``DRLAB_SEED`` if set, else a fresh one per test process; every test that uses the
  ``fuzz_seed`` fixture records it, and a failing test's report says ``replay with DRLAB_SEED=...``
  (tests/conftest.py). ``fuzz(n)`` is the settings + seed decorator (no deadline: the machine is
  shared).
- ``mutated(valid)``: a valid encoding then bit flips, byte overwrites, truncation at any length,
  extension with garbage, or an aligned 4- or 8-byte field set to a huge value (2^32-1, 2^63,
  2^64-1 ...): what a hostile peer or a torn write gives.
- ``peak_alloc(fn)``: the peak bytes Python allocated while ``fn`` ran (tracemalloc), so a test
  can assert that a length field claiming gigabytes is refused without allocating them.
"""

from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

SEED = int(os.environ.get("DRLAB_SEED") or random.SystemRandom().randrange(2**32))
HUGE = (2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1)


def fuzz(max_examples: int = 300) -> Callable[[Any], Any]:
    """Settings for one fuzz test: ``max_examples``, no deadline, seeded by :data:`SEED`."""
    conf = settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

    def wrap(test: Any) -> Any:
        return hypothesis_seed(SEED)(conf(test))
    return wrap


@pytest.fixture
def fuzz_seed(request: pytest.FixtureRequest) -> int:
    """Records the hypothesis seed so a failing test's report tells how to replay it."""
    print(f"\n{request.node.nodeid}: DRLAB_SEED={SEED}")
    request.node.user_properties.append(("DRLAB_SEED", SEED))
    return SEED


def _set_field(buf: bytearray, pos: int, width: int, value: int, order: str) -> None:
    if len(buf) >= width:
        pos = pos % (len(buf) - width + 1) // width * width
        buf[pos:pos + width] = (value % 2 ** (8 * width)).to_bytes(width, order)  # type: ignore[arg-type]


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with one to four hostile edits (see the module docstring)."""
    buf = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("flip", "byte", "truncate", "extend", "field")))
        pos = draw(st.integers(0, max(0, len(buf) * 8 - 1)))
        if kind == "flip" and buf:
            buf[pos // 8 % len(buf)] ^= 1 << (pos % 8)
        elif kind == "byte" and buf:
            buf[pos % len(buf)] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del buf[draw(st.integers(0, len(buf))):]
        elif kind == "extend":
            buf += draw(st.binary(min_size=1, max_size=64))
        elif kind == "field":
            width = draw(st.sampled_from((2, 4, 8)))
            order = draw(st.sampled_from(("little", "big")))
            _set_field(buf, pos // 8, width, draw(st.sampled_from(HUGE)), order)
    return bytes(buf)


def peak_alloc(fn: Callable[[], object]) -> int:
    """Peak bytes allocated (tracemalloc) while ``fn()`` runs; exceptions from ``fn`` are swallowed
    after the measurement (the caller checks them separately)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            fn()
        except Exception:  # noqa: BLE001 - only the allocation is measured here
            pass
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
