"""A PS switch in the same generation, agent side: the uploader moves to the new PS and sends
again, with the same bytes and in order, exactly the batches the old PS had not acknowledged;
the loss detector leaves a gap below the switch to the old PS's drain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentfakes import FakePS, issue
from test_agent_uploader import DISK, batch, uploader

from agent.psloss import LossDetector
from common import tls
from common.http import ApiClient


@pytest.fixture
async def two_pss(tmp_path: Path) -> AsyncIterator[tuple[FakePS, ApiClient, FakePS, ApiClient]]:
    old, new = FakePS(), FakePS()
    agent_files = issue(tmp_path / "agent", "22" * 16, "agent")
    urls = [await old.start(issue(tmp_path / "ps1", "11" * 16, "ps")),
            await new.start(issue(tmp_path / "ps2", "33" * 16, "ps"))]
    clients = [ApiClient(u, tls.client_context(agent_files), timeout_s=5) for u in urls]
    try:
        yield old, clients[0], new, clients[1]
    finally:
        for c in clients:
            await c.close()
        await old.stop()
        await new.stop()


@pytest.mark.timeout(30)
async def test_retarget_resends_the_unacknowledged_batches_to_the_new_ps_then_goes_on(
        two_pss: tuple[FakePS, ApiClient, FakePS, ApiClient]) -> None:
    old, old_client, new, new_client = two_pss
    up = uploader(old_client, window=2)
    for seq in range(1, 6):
        up.submit(seq, batch(seq))
    assert await up.drain(10) and up.acked_seq == 5
    old.unavailable = True  # seqs 6..8 reach the old PS but are never acknowledged
    for seq in range(6, 9):
        up.submit(seq, batch(seq))
    resend = await up.retarget(new_client)
    assert resend == 3 and up.resent_bytes == sum(len(batch(s)) for s in (6, 7, 8))
    for seq in range(9, 12):
        up.submit(seq, batch(seq))
    assert await up.drain(10)
    assert up.acked_seq == 11 and up.unacked_batches == 0
    got = sorted(s for _, _, s in new.batches)
    assert got == list(range(6, 12))  # nothing the old PS acknowledged is sent again
    assert all(new.batches[(DISK, 1, s)] == batch(s) for s in got)  # the very same bytes
    await up.stop()


def test_a_gap_below_the_switch_is_the_old_ps_drain_not_a_loss() -> None:
    d = LossDetector(confirm_s=1.0, floor=11)  # the new PS was first sent seq 11
    status = {"mt_received": 4, "held_from": 11}  # the old PS still drains 5..10
    assert not any(d.observe(status, acked_seq=15, now=t) for t in (0.0, 1.5, 3.0, 10.0))
    status = {"mt_received": 12, "held_from": 0}  # 13..15 acknowledged by the new PS, then gone
    assert not d.observe(status, acked_seq=15, now=11.0)
    assert d.observe(status, acked_seq=15, now=12.5)
