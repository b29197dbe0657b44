"""common/recent.py: the byte-bounded memory copy of what was just stored."""

from __future__ import annotations

import threading

import pytest

from common.config import ConfigError, MTConfig, PSConfig
from common.recent import Recent


@pytest.mark.timeout(10)
def test_the_oldest_go_first_within_the_budget() -> None:
    r: Recent[str, bytes] = Recent(10)
    r.put("a", b"aaaa", 4)
    r.put("b", b"bbbb", 4)
    r.put("c", b"cc", 2)
    assert (len(r), r.bytes) == (3, 10)
    r.put("d", b"ddd", 3)  # a (4) goes: 6 + 3 <= 10
    assert r.get("a") is None and r.get("b") == b"bbbb" and r.get("d") == b"ddd"
    assert r.bytes == 9 and (r.hits, r.misses) == (2, 1)


@pytest.mark.timeout(10)
def test_replacing_popping_and_dropping_keep_the_count_right() -> None:
    r: Recent[tuple[str, int], int] = Recent(100)
    r.put(("x", 1), 1, 40)
    r.put(("x", 1), 2, 10)  # the same key again: replaced, counted once
    r.put(("y", 1), 3, 30)
    assert (r.get(("x", 1)), r.bytes) == (2, 40)
    r.pop(("x", 1))
    r.pop(("x", 1))  # twice: nothing more
    assert r.bytes == 30
    r.drop_where(lambda key: key[0] == "y")
    assert (len(r), r.bytes) == (0, 0)


@pytest.mark.timeout(10)
def test_a_value_larger_than_the_budget_is_not_kept_and_a_zero_budget_keeps_nothing() -> None:
    r: Recent[str, bytes] = Recent(8)
    r.put("small", b"1234", 4)
    r.put("big", b"x" * 9, 9)
    assert r.get("big") is None and r.get("small") == b"1234"
    none: Recent[str, bytes] = Recent(0)
    none.put("a", b"a", 1)
    assert len(none) == 0


@pytest.mark.timeout(20)
def test_threads_storing_and_popping_leave_a_consistent_count() -> None:
    r: Recent[tuple[int, int], bytes] = Recent(1 << 16)

    def work(t: int) -> None:
        for i in range(2000):
            r.put((t, i), b"", 100)
            if i % 3:
                r.pop((t, i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.bytes == 100 * len(r) <= 1 << 16


@pytest.mark.timeout(10)
def test_negative_memory_budgets_are_refused() -> None:
    with pytest.raises(ConfigError, match="cache_memory_bytes"):
        PSConfig(cache_memory_bytes=-1)
    with pytest.raises(ConfigError, match="staging_memory_bytes"):
        MTConfig(staging_memory_bytes=-1)
