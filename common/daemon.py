"""What every daemon's ``python -m PKG`` does: read its typed config, set up logging, bind its
listening sockets before registering, run the service until SIGTERM/SIGINT, stop it cleanly."""

from __future__ import annotations

import argparse
import asyncio
import io
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from common import config, errors
from common import logging as dlog

log = dlog.get("drlab.daemon")

C = TypeVar("C")


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def bind_socket(host: str, port: int, backlog: int = 256) -> socket.socket:
    """A non-blocking listening socket (port 0 allowed), closed again if binding fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def parse_args(name: str, description: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=description)
    parser.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one configuration key (repeatable)")
    return parser.parse_args(argv)


async def serve(service: Service) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await _stop_reporting(service)


STOP_REPORT_S = 8.0  # a stop still running then logs every task's stack (it goes on)


async def _stop_reporting(service: Service) -> None:
    """``service.stop()``; when it takes longer than ``STOP_REPORT_S``, log where each task is,
    so that a stop that hangs until SIGKILL leaves its reason in the log."""
    stopping = asyncio.ensure_future(service.stop())
    done, _ = await asyncio.wait({stopping}, timeout=STOP_REPORT_S)
    if not done:
        log.error("stop_slow", seconds=STOP_REPORT_S, tasks=[_where(t) for t in asyncio.all_tasks()])
    await stopping


def _where(task: asyncio.Task[Any]) -> str:
    stack = io.StringIO()
    task.print_stack(limit=8, file=stack)
    return f"{task.get_name()}: {stack.getvalue()[-1500:]}"


def main(name: str, description: str, cfg_type: type[C], make: Callable[[C], Any],
         argv: list[str] | None = None) -> int:
    """Exit status: 0 after a clean stop, 1 if the service failed, 2 for a config that does not load."""
    args = parse_args(name, description, argv)
    try:
        cfg = config.load(cfg_type, args.config, args.overrides)
    except errors.ConfigError as exc:
        print(f"{name}: {exc.message}", file=sys.stderr)
        return 2
    dlog.setup(name, getattr(cfg, "log_file", None))
    try:
        asyncio.run(serve(make(cfg)))
    except errors.DrlabError as exc:
        dlog.get(f"drlab.{name}").error(f"{name}_failed", error=exc.message, code=exc.code)
        return 1
    return 0
