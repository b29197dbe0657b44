"""``python -m cs --config FILE [--set key=value ...]``: run the configuration server until
SIGTERM or SIGINT, then stop cleanly."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from common import errors
from common import logging as dlog
from common.config import CSConfig, load
from cs.service import CSService

log = dlog.get("drlab.cs")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cs", description="drlab configuration server")
    p.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key")
    return p.parse_args(argv)


async def run(cfg: CSConfig) -> None:
    service = CSService(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
        log.info("signal_received")
    finally:
        await service.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load(CSConfig, args.config, args.set)
        dlog.setup("cs", cfg.log_file)
        asyncio.run(run(cfg))
    except errors.ConfigError as exc:
        print(f"cs: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
