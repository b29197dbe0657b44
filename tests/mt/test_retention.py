"""The retention rule alone (mt/retention.py): which whole oldest segments go, and when to pause."""

from __future__ import annotations

import pytest

from mt.retention import NS, Facts, Segment, decide, need_bytes, prunable

NOW = 10_000 * NS


def segs(*times_s: int | None, size: int = 100) -> tuple[Segment, ...]:
    """Segments 1.. with the newest point at ``NOW - t`` seconds (None: no point)."""
    return tuple(Segment(i + 1, None if t is None else NOW - t * NS, size) for i, t in enumerate(times_s))


def facts(segments: tuple[Segment, ...], current: int | None = None, pinned: int | None = None,
          window_s: int = 3600, need: int = 0, action: str = "prune") -> Facts:
    return Facts(segments, current if current is not None else segments[-1].segno, pinned, NOW, window_s, need,
                 action)


def test_window_prunes_the_oldest_segments_whose_newest_point_is_outside() -> None:
    d = decide(facts(segs(9000, 5000, 4000, 100, 10)))
    assert d.prune == (1, 2, 3) and d.by_window == 3 and d.by_space == 0 and not d.pause
    assert d.through == 3 and d.freed_bytes == 300


def test_a_segment_inside_the_window_stops_the_prefix() -> None:
    # segment 3 is older again (clock step): only a prefix may go, never a hole
    assert decide(facts(segs(9000, 100, 9000, 10))).prune == (1,)


def test_a_segment_whose_newest_point_is_exactly_at_the_window_edge_stays() -> None:
    assert decide(facts(segs(3600, 10))).prune == ()
    assert decide(facts(segs(3601, 10))).prune == (1,)


def test_never_the_current_segment_even_outside_the_window_or_on_low_space() -> None:
    d = decide(facts(segs(9000, 9000, 9000), need=10_000))
    assert d.prune == (1, 2) and d.pause  # the current one is all that is left: still short
    assert decide(facts(segs(9000, 9000, 9000, 9000), current=2)).prune == (1,)


def test_never_a_pinned_segment_or_anything_after_it() -> None:
    assert decide(facts(segs(9000, 9000, 9000, 10), pinned=2)).prune == (1,)
    d = decide(facts(segs(9000, 9000, 9000, 10), pinned=1, need=10_000))
    assert d.prune == () and d.pause
    assert prunable(facts(segs(1, 1, 1, 1), pinned=3)) == list(segs(1, 1, 1, 1)[:2])


def test_no_window_keeps_everything_while_space_lasts() -> None:
    assert decide(facts(segs(90_000, 90_000, 10), window_s=0)).prune == ()


def test_low_space_prune_goes_inside_the_window_until_enough_is_freed() -> None:
    d = decide(facts(segs(9000, 100, 90, 80, 10), need=250))
    assert d.prune == (1, 2, 3) and d.by_window == 1 and d.by_space == 2 and not d.pause
    assert d.freed_bytes == 300


def test_low_space_pause_prunes_only_by_window_and_pauses_when_that_is_not_enough() -> None:
    d = decide(facts(segs(9000, 100, 90, 10), need=250, action="pause"))
    assert d.prune == (1,) and d.by_space == 0 and d.pause
    enough = decide(facts(segs(9000, 9000, 9000, 10), need=250, action="pause"))
    assert enough.prune == (1, 2, 3) and not enough.pause  # the window alone freed enough


def test_empty_segments_before_the_current_one_may_go_by_window() -> None:
    assert decide(facts(segs(None, 10))).prune == (1,)


def test_unknown_action_is_an_error() -> None:
    with pytest.raises(ValueError, match="low-space action"):
        decide(facts(segs(1, 1), action="panic"))


def test_need_bytes_has_hysteresis() -> None:
    assert need_bytes(free_bytes=200, total_bytes=1000, low_pct=10, resume_pct=20, paused=False) == 0
    assert need_bytes(99, 1000, 10, 20, paused=False) == 101
    assert need_bytes(150, 1000, 10, 20, paused=True) == 50  # once low, until resume_pct is free
    assert need_bytes(200, 1000, 10, 20, paused=True) == 0
