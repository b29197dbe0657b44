"""common/daemon.py: a stop that takes too long logs where every task is (then still finishes)."""

from __future__ import annotations

import asyncio

import pytest

from common import daemon


class SlowStop:
    def __init__(self) -> None:
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await asyncio.sleep(0.3)
        self.stopped = True


class QuickStop(SlowStop):
    async def stop(self) -> None:
        self.stopped = True


async def test_a_slow_stop_logs_the_tasks_and_still_completes(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(daemon, "STOP_REPORT_S", 0.05)
    service = SlowStop()
    await daemon._stop_reporting(service)
    assert service.stopped
    out = capsys.readouterr()
    assert "stop_slow" in out.out + out.err and "SlowStop.stop" in out.out + out.err


async def test_a_quick_stop_logs_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(daemon, "STOP_REPORT_S", 0.5)
    service = QuickStop()
    await daemon._stop_reporting(service)
    out = capsys.readouterr()
    assert service.stopped and "stop_slow" not in out.out + out.err
