"""common/bandwidth.py: the schedule picks the window holding the time (wrapping past midnight,
first match wins, the default outside), and the token bucket holds a sender to its rate."""

from __future__ import annotations

import pytest

from common import bandwidth
from common.bandwidth import Plan, TokenBucket, Window

MB = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hm(text: str) -> int:
    return bandwidth.minute_of(text, "t")


def test_schedule_selection_by_local_time() -> None:
    plan = bandwidth.parse_plan({"bytes_per_s": 20 * MB, "windows": [
        {"from": "08:00", "to": "18:00", "bytes_per_s": 5 * MB},
        {"from": "22:00", "to": "06:00", "bytes_per_s": 0},  # wraps past midnight; 0: unlimited at night
        {"from": "09:00", "to": "10:00", "bytes_per_s": 1}]})  # shadowed: the first match wins
    assert [plan.limit_at(hm(t)) for t in ("07:59", "08:00", "09:30", "17:59", "18:00", "21:59",
                                           "22:00", "23:59", "00:00", "05:59", "06:00")] == [
        20 * MB, 5 * MB, 5 * MB, 5 * MB, 20 * MB, 20 * MB, 0, 0, 0, 0, 20 * MB]
    assert Plan().limit_at(hm("12:00")) == 0
    assert bandwidth.parse_plan(plan.to_json()) == plan  # round trip through the settings document


@pytest.mark.parametrize("body", [
    {}, {"bytes_per_s": -1}, {"bytes_per_s": 1.5}, {"bytes_per_s": True}, {"bytes_per_s": "5"},
    {"bytes_per_s": 1 << 41}, {"bytes_per_s": 1, "extra": 2},
    {"bytes_per_s": 1, "windows": {}},
    {"bytes_per_s": 1, "windows": [{"from": "8:00", "to": "18:00", "bytes_per_s": 1}]},
    {"bytes_per_s": 1, "windows": [{"from": "08:00", "to": "24:00", "bytes_per_s": 1}]},
    {"bytes_per_s": 1, "windows": [{"from": "08:00", "to": "08:00", "bytes_per_s": 1}]},
    {"bytes_per_s": 1, "windows": [{"from": "08:00", "to": "09:00"}]},
    {"bytes_per_s": 1, "windows": [{"from": "08:00", "to": "09:00", "bytes_per_s": 1}] * 25},
])
def test_bad_plans_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        bandwidth.parse_plan(body)


def test_bucket_holds_the_rate_with_debt_for_large_batches() -> None:
    clock = FakeClock()
    bucket = TokenBucket(clock, rate=2 * MB)
    sent = 0
    for _ in range(40):  # 40 batches of 256 KiB, each sent once its wait has passed
        clock.now += bucket.reserve(256 * 1024)
        sent += 256 * 1024
    elapsed = clock.now - 1000.0
    # the bucket starts empty (no burst before the first send): every byte counts
    assert sent / elapsed == pytest.approx(2 * MB, rel=0.001)
    assert bucket.reserve(10 * MB) == pytest.approx(5.0)  # a batch larger than the burst: debt, not refusal


def test_bucket_burst_rate_change_and_unlimited() -> None:
    clock = FakeClock()
    bucket = TokenBucket(clock, rate=MB, burst_s=0.5)
    clock.now += 100.0  # idle for long: at most burst_s of tokens saved up
    assert bucket.reserve(MB // 2) == 0.0
    assert bucket.reserve(MB) == pytest.approx(1.0)
    bucket.set_rate(0)  # unlimited: no wait, and the debt is forgiven
    assert bucket.reserve(100 * MB) == 0.0
    bucket.set_rate(4 * MB)
    assert bucket.reserve(4 * MB) == pytest.approx(1.0)
    assert "rate=4000000" in repr(bucket)


def test_window_wrap() -> None:
    w = Window(hm("22:00"), hm("06:00"), 1)
    assert w.holds(hm("23:00")) and w.holds(hm("01:00")) and not w.holds(hm("12:00"))
