"""Service control of an installed component, as the documented ``net stop`` / ``net start`` of a
process server's services:

    drlab ps|mt|agent start   --dir DATA        start the daemon detached (DATA/ROLE.out, DATA/ROLE.pid)
    drlab ps|mt|agent stop    --dir DATA [--timeout-s 30] [--force]
    drlab ps|mt|agent restart --dir DATA        e.g. after ``reregister`` (the new certificate)
    drlab ps|mt|agent status  --dir DATA        exit 0 running, 3 not running
    drlab ps|mt|agent uninstall --dir DATA [--force]

Rules:
- A daemon is ours only if its pid file names a live process whose command line is
  ``-m ROLE --config DATA/ROLE.toml``: a stale pid file (or a reused pid) counts as not running and is
  removed by ``start``.
- ``stop`` sends SIGTERM (the daemon drains and exits cleanly) and waits ``--timeout-s``; still alive
  then, it says so and exits 1, unless ``--force`` (SIGKILL: nothing acknowledged is lost — the
  cache and journal recover at the next start — but the stop is not clean).
- ``uninstall`` stops the daemon and deletes DATA only once the CS no longer knows the component
  (``drlab ps remove`` / ``purge`` revoked its certificate: the CS answers its identity 401
  certificate_revoked): a registered PS's cache may hold batches no MT has. ``--force`` skips the
  check (e.g. the CS is gone for good).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from common import errors, tls
from common.http import ApiClient

MODULES = {"ps": "ps", "mt": "mt", "agent": "agent"}
NOT_RUNNING = 3  # the status exit code of a stopped service (as service managers use)


class ServiceError(Exception):
    """What the command prints (one line) before exiting 1."""


class Service:
    """The daemon of one data directory (``role`` ps, mt or agent)."""

    def __init__(self, role: str, data_dir: Path) -> None:
        self.role = role
        self.data_dir = data_dir.resolve()
        self.config = self.data_dir / f"{role}.toml"
        self.pid_file = self.data_dir / f"{role}.pid"
        self.out = self.data_dir / f"{role}.out"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", MODULES[self.role], "--config", str(self.config)]

    def pid(self) -> int | None:
        """The running daemon's pid, or None (no pid file, a dead or foreign process)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if owns(pid, self.role, self.config) else None

    def start(self, settle_s: float = 0.5) -> int:
        if not self.config.exists():
            raise ServiceError(f"{self.data_dir} holds no {self.role} config: drlab {self.role} install first")
        running = self.pid()
        if running is not None:
            raise ServiceError(f"the {self.role} of {self.data_dir} is already running (pid {running})")
        pid = spawn(self.argv(), self.out)
        tls.write_private(self.pid_file, f"{pid}\n".encode())
        time.sleep(settle_s)  # a config the daemon refuses makes it exit at once: say so now
        if not alive(pid):
            self.pid_file.unlink(missing_ok=True)
            raise ServiceError(f"the {self.role} exited at start; its output ends with: {tail(self.out)}")
        return pid

    def stop(self, timeout_s: float, force: bool) -> int | None:
        """The pid stopped (None: it was not running)."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return None
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, timeout_s):
            if not force:
                raise ServiceError(f"the {self.role} (pid {pid}) is still stopping after {timeout_s:g} s "
                                   "(drlab ... stop --force kills it)")
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)
        return pid


def spawn(argv: list[str], out_path: Path) -> int:
    """``argv`` in a new session, output appended to ``out_path``; its pid."""
    out = open(out_path, "ab")  # noqa: SIM115 (handed to the child)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    finally:
        out.close()
    return proc.pid


def owns(pid: int, role: str, config: Path) -> bool:
    """Whether ``pid`` is a live ``-m ROLE --config CONFIG`` (not a reused pid)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    text = [w.decode(errors="replace") for w in words]
    return alive(pid) and "-m" in text and MODULES[role] in text and str(config) in text


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state != "Z":
        return True
    if _is_child(pid):  # exited, not yet reaped by us (the CLI is its parent right after a start)
        os.waitpid(pid, os.WNOHANG)
    return False


def _is_child(pid: int) -> bool:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, IndexError, ValueError):
        return False


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return not alive(pid)


def tail(path: Path, n: int = 300) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace").strip() or "(nothing)"
    except OSError:
        return "(no output file)"


def cs_url_of(svc: Service) -> str:
    """The CS the component talks to: its config's ``cs_url``, else its identity's."""
    try:
        return str(tomllib.loads(svc.config.read_text())["cs_url"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return str(tls.IdentityFiles(svc.data_dir / "identity").read_meta().get("cs_url"))


async def cs_knows(cs_url: str, files: tls.IdentityFiles, timeout_s: float) -> bool:
    """Whether the CS still accepts this identity (False: revoked, or a component it removed)."""
    api = ApiClient(cs_url, tls.client_context(files), timeout_s=timeout_s)
    try:
        await api.get("/v1/settings", params={"version": -1, "wait_s": 0})
        return True
    except errors.DrlabError as exc:
        if exc.status == 401:
            return False
        raise ServiceError(f"cannot ask the CS at {cs_url} whether it still knows this component: {exc.message} "
                           "(--force uninstalls anyway)") from exc
    finally:
        await api.close()


def uninstall(svc: Service, force: bool, timeout_s: float) -> None:
    if not svc.data_dir.exists():
        raise ServiceError(f"{svc.data_dir} does not exist")
    files = tls.IdentityFiles(svc.data_dir / "identity")
    if not force and files.exists() and asyncio.run(cs_knows(cs_url_of(svc), files, timeout_s)):
        raise ServiceError(f"the CS still has this {svc.role}: remove it there first (a PS: drlab ps remove ID once "
                           "its machines moved; any component: drlab cs revoke ID), or --force")
    svc.stop(timeout_s, force=True)
    shutil.rmtree(svc.data_dir)


# ------------------------------------------------------------------ commands


def cmd_service(args: argparse.Namespace) -> int:
    svc = Service(args.service_role, Path(args.data_dir))
    try:
        return _run(svc, args)
    except ServiceError as exc:
        print(f"drlab: error: {exc}", file=sys.stderr)
        return 1


def _run(svc: Service, args: argparse.Namespace) -> int:
    what = args.service_action
    if what == "status":
        pid = svc.pid()
        print(f"{svc.role} of {svc.data_dir}: " + (f"running (pid {pid})" if pid else "not running"))
        return 0 if pid else NOT_RUNNING
    if what in ("stop", "restart"):
        stopped = svc.stop(args.timeout_s, args.force)
        print(f"{svc.role} stopped (pid {stopped})" if stopped else f"{svc.role} was not running")
    if what in ("start", "restart"):
        print(f"{svc.role} started (pid {svc.start()}), output in {svc.out}")
    if what == "uninstall":
        uninstall(svc, args.force, args.timeout_s)
        print(f"{svc.role} uninstalled: {svc.data_dir} removed")
    return 0


def add_parsers(sub: Any, role: str) -> None:
    """``start | stop | restart | status | uninstall`` under ``drlab ROLE``."""
    helps = {"start": "start the installed daemon detached", "stop": "stop the daemon (SIGTERM, clean)",
             "restart": "stop then start (e.g. after reregister)", "status": "running or not (exit 3: not)",
             "uninstall": "stop it and delete its data dir, once the CS has removed it"}
    for action, text in helps.items():
        p = sub.add_parser(action, help=text)
        p.add_argument("--dir", dest="data_dir", required=True, help="the component's data directory")
        if action in ("stop", "restart", "uninstall"):
            p.add_argument("--timeout-s", type=float, default=30.0, help="how long to wait (stop, CS check)")
            p.add_argument("--force", action="store_true",
                           help="stop: SIGKILL after the timeout; uninstall: skip the CS check")
        p.set_defaults(func=cmd_service, service_role=role, service_action=action)
