"""The throttle rule alone (ps/throttle.py): samples in, starts / stops / refusals out."""

from __future__ import annotations

import pytest

from common.config import ConfigError, PSConfig
from ps.throttle import CACHE, CACHE_FREE, DISK_BACKLOG, Sample, Throttle, ThrottlePolicy

MiB = 1 << 20
A, B = "aa" * 16, "bb" * 16
BIG_FS = 1 << 50


def sample(used: int, *, max_bytes: int = 100 * MiB, fs_free: int = BIG_FS, **backlog: int) -> Sample:
    disks = {A: backlog.get("a", 0), B: backlog.get("b", 0)}
    return Sample(used, max_bytes, fs_free, disks)


def test_free_space_is_the_smaller_of_the_limit_and_the_filesystem() -> None:
    assert sample(30 * MiB).free_pct == pytest.approx(70.0)
    # the filesystem has only 10 MiB left: capacity 40 MiB, of which 10 free
    s = sample(30 * MiB, fs_free=10 * MiB)
    assert (s.free_bytes, s.capacity_bytes) == (10 * MiB, 40 * MiB)
    assert s.free_pct == pytest.approx(25.0)
    assert sample(100 * MiB).free_pct == 0.0 and sample(0, max_bytes=0).free_pct == 0.0


def test_cache_throttle_starts_under_20_pct_and_lifts_at_25_pct_without_flapping() -> None:
    t = Throttle(ThrottlePolicy())
    assert t.update(sample(80 * MiB), 1) == [] and t.refusal(A) is None  # exactly 20 % free: not under
    [start] = t.update(sample(81 * MiB), 2)
    assert (start.scope, start.started, start.reason) == (CACHE, True, CACHE_FREE)
    assert t.cache.active and t.cache.since_ns == 2
    why = t.refusal(A)
    assert why is not None and why.startswith("cache_free") and t.refusal(B) is not None
    assert t.cache.refusals == 2
    for used in (79, 77, 75.5):  # 21..24.5 % free: still throttled (hysteresis)
        assert t.update(sample(int(used * MiB)), 3) == [] and t.refusal(A) is not None
    [stop] = t.update(sample(75 * MiB), 10)
    assert (stop.started, stop.lasted_ns) == (False, 8) and not t.cache.active and t.cache.since_ns == 10
    assert t.refusal(A) is None
    assert t.update(sample(79 * MiB), 11) == []  # 21 % free: not throttled again until under 20 %


def test_a_full_filesystem_throttles_a_cache_far_under_its_limit() -> None:
    t = Throttle(ThrottlePolicy())
    [start] = t.update(sample(1 * MiB, fs_free=MiB // 8), 1)
    assert start.reason == CACHE_FREE and t.refusal(A) is not None
    assert t.update(sample(1 * MiB, fs_free=100 * MiB), 2)[0].started is False


def test_disk_backlog_throttles_only_that_disk_until_drained_to_75_pct() -> None:
    policy = ThrottlePolicy(disk_backlog_max_bytes=8 * MiB)
    t = Throttle(policy)
    assert t.update(sample(16 * MiB, a=8 * MiB, b=8 * MiB), 1) == []  # at the limit: not over
    [start] = t.update(sample(17 * MiB, a=9 * MiB, b=8 * MiB), 2)
    assert (start.scope, start.reason, start.value, start.limit) == (A, DISK_BACKLOG, 9 * MiB, 8 * MiB)
    why = t.refusal(A)
    assert why is not None and why.startswith("disk_backlog") and t.refusal(B) is None
    assert t.disk_metrics(A) == {"active": True, "reason": DISK_BACKLOG, "since_ns": 2, "refusals": 1}
    assert t.update(sample(7 * MiB, a=7 * MiB), 3) == []  # 87 % of the limit: still throttled
    [stop] = t.update(sample(6 * MiB, a=6 * MiB), 4)
    assert (stop.scope, stop.started) == (A, False) and t.refusal(A) is None
    assert t.metrics()["throttled_disks"] == []


def test_cache_throttle_wins_over_a_disk_that_is_fine_and_metrics_say_so() -> None:
    t = Throttle(ThrottlePolicy(disk_backlog_max_bytes=50 * MiB))
    t.update(sample(90 * MiB, a=60 * MiB, b=30 * MiB), 5)
    assert t.refusal(B) is not None  # B is under its limit but the cache is throttled
    m = t.metrics()
    assert (m["active"], m["reason"], m["since_ns"], m["throttled_disks"]) == (True, CACHE_FREE, 5, [A])
    assert m["free_pct"] == pytest.approx(10.0) and m["threshold_pct"] == 20.0


def test_policy_and_config_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        ThrottlePolicy(free_pct=30.0, resume_free_pct=25.0)
    with pytest.raises(ValueError):
        ThrottlePolicy(disk_backlog_max_bytes=0)
    with pytest.raises(ConfigError):
        PSConfig(cache_throttle_free_pct=50.0, cache_resume_free_pct=40.0)
    with pytest.raises(ConfigError):
        PSConfig(throttle_retry_after_s=0)
    p = ThrottlePolicy.from_config(PSConfig())
    assert (p.free_pct, p.resume_free_pct, p.retry_after_s) == (20.0, 25.0, 1.0)
