"""``drlab ps|mt|agent start|stop|restart|status|uninstall``: a stand-in daemon whose command line
is the real one's (``-m ps --config DATA/ps.toml``) — the pid file, a stale or foreign pid, a clean
stop, a stop that times out and ``--force``, a daemon that exits at start, and ``uninstall --force``.
The CS side of uninstall (refused while the CS still has the component) runs in
tests/integration/test_ps_tasks_lab.py against a real CS."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from deploy import cli, cli_service
from deploy.cli_service import NOT_RUNNING, Service, ServiceError


class StandIn(Service):
    """Runs ``python -c CODE -m ps --config DATA/ps.toml`` (what follows -c is argv, so the command
    line matches the real daemon's and ``owns`` accepts it)."""

    code = "import time; time.sleep(60)"

    def argv(self) -> list[str]:
        return [sys.executable, "-c", self.code, "-m", "ps", "--config", str(self.config)]


def installed(tmp_path: Path) -> Path:
    data = tmp_path / "ps"
    data.mkdir()
    (data / "ps.toml").write_text('cs_url = "https://127.0.0.1:1"\n')
    return data


@pytest.mark.timeout(30)
def test_start_status_restart_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = installed(tmp_path)
    monkeypatch.setattr(cli_service, "Service", StandIn)
    argv = ["ps", "status", "--dir", str(data)]
    assert cli.main(argv) == NOT_RUNNING and "not running" in capsys.readouterr().out
    assert cli.main(["ps", "start", "--dir", str(data)]) == 0
    pid = int((data / "ps.pid").read_text())
    assert cli.main(argv) == 0 and f"running (pid {pid})" in capsys.readouterr().out
    assert cli.main(["ps", "start", "--dir", str(data)]) == 1  # one daemon per data dir
    assert "already running" in capsys.readouterr().err
    assert cli.main(["ps", "restart", "--dir", str(data)]) == 0
    new_pid = int((data / "ps.pid").read_text())
    assert new_pid != pid and not cli_service.alive(pid)
    assert cli.main(["ps", "stop", "--dir", str(data)]) == 0
    assert not cli_service.alive(new_pid) and not (data / "ps.pid").exists()
    assert cli.main(["ps", "stop", "--dir", str(data)]) == 0 and "was not running" in capsys.readouterr().out


def test_a_stale_or_foreign_pid_is_not_ours(tmp_path: Path) -> None:
    data = installed(tmp_path)
    svc = StandIn("ps", data)
    (data / "ps.pid").write_text(f"{os.getpid()}\n")  # alive, but not a PS of this data dir
    assert svc.pid() is None
    (data / "ps.pid").write_text("not a pid\n")
    assert svc.pid() is None
    (data / "ps.pid").write_text("4194399\n")  # beyond pid_max: no such process
    assert svc.pid() is None
    pid = svc.start(settle_s=0.2)  # a stale pid file does not block a start
    try:
        assert svc.pid() == pid
    finally:
        svc.stop(5.0, force=True)


@pytest.mark.timeout(30)
def test_a_stop_that_times_out_says_so_and_force_kills(tmp_path: Path) -> None:
    data = installed(tmp_path)
    svc = StandIn("ps", data)
    svc.code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    pid = svc.start(settle_s=0.3)
    with pytest.raises(ServiceError, match="still stopping"):
        svc.stop(0.5, force=False)
    assert cli_service.alive(pid) and svc.pid() == pid  # nothing changed
    assert svc.stop(0.5, force=True) == pid
    assert not cli_service.alive(pid)


def test_a_daemon_that_exits_at_start_is_reported_with_its_output(tmp_path: Path) -> None:
    data = installed(tmp_path)
    svc = StandIn("ps", data)
    svc.code = "import sys; print('config: unknown key nope'); sys.exit(2)"
    with pytest.raises(ServiceError, match="unknown key nope"):
        svc.start(settle_s=0.5)
    assert not (data / "ps.pid").exists()


def test_start_without_an_install_and_uninstall_of_nothing_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="ps install first"):
        Service("ps", tmp_path / "nothing").start()
    with pytest.raises(ServiceError, match="does not exist"):
        cli_service.uninstall(Service("ps", tmp_path / "nothing"), force=True, timeout_s=1.0)


@pytest.mark.timeout(30)
def test_uninstall_force_stops_the_daemon_and_removes_its_data(tmp_path: Path) -> None:
    data = installed(tmp_path)
    svc = StandIn("ps", data)
    pid = svc.start(settle_s=0.2)
    cli_service.uninstall(svc, force=True, timeout_s=5.0)
    assert not data.exists() and not cli_service.alive(pid)
