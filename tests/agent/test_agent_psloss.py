"""Detecting a PS that lost acknowledged batches."""

from __future__ import annotations

from agent.psloss import LossDetector


def st(received: int, held_from: int) -> dict[str, int]:
    return {"mt_received": received, "held_from": held_from}


def test_a_loss_is_reported_once_after_it_is_confirmed() -> None:
    d = LossDetector(confirm_s=1.0)
    assert not d.observe(st(5, 0), acked_seq=9, now=0.0)  # seen once
    assert not d.observe(st(5, 0), acked_seq=9, now=0.5)  # not long enough
    assert d.observe(st(5, 0), acked_seq=9, now=1.2)
    assert not d.observe(st(5, 0), acked_seq=9, now=5.0)  # once


def test_no_loss_when_the_ps_holds_the_next_batch_or_the_mt_moves() -> None:
    d = LossDetector(confirm_s=1.0)
    assert not d.observe(st(5, 6), acked_seq=9, now=0.0)  # the PS holds seq 6
    assert not d.observe(st(5, 0), acked_seq=5, now=1.0)  # nothing acked beyond the MT
    assert not d.observe(st(5, 8), acked_seq=9, now=2.0)  # 6 and 7 gone: suspect
    assert not d.observe(st(7, 8), acked_seq=9, now=3.5)  # the MT moved on: a new suspicion at most
    assert not d.observe(st(7, 8), acked_seq=9, now=3.6)  # 8 is held: fine
    assert not d.observe({"mt_received": 1}, acked_seq=9, now=9.0)  # a PS that does not say: never
