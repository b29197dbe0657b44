"""``python -m mt --config FILE [--set key=value ...]``: run a master target until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from common import config, errors
from common import logging as dlog
from mt.service import MTService


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mt", description="drlab master target")
    parser.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one configuration key (repeatable)")
    return parser.parse_args(argv)


async def run(cfg: config.MTConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = MTService(cfg)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config.load(config.MTConfig, args.config, args.overrides)
    except errors.ConfigError as exc:
        print(f"mt: {exc.message}", file=sys.stderr)
        return 2
    dlog.setup("mt", cfg.log_file)
    try:
        asyncio.run(run(cfg))
    except errors.DrlabError as exc:
        dlog.get("drlab.mt").error("mt_failed", error=exc.message, code=exc.code)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
