"""``python -m agent --config FILE [--set key=value ...]``: run the mobility agent until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from agent.service import AgentService
from common import config, errors
from common import logging as dlog


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent", description="drlab mobility agent")
    parser.add_argument("--config", type=Path, help="TOML file (disks as [[disks]] tables)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one configuration key")
    return parser.parse_args(argv)


async def run(cfg: config.AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = AgentService(cfg)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config.load(config.AgentConfig, args.config, args.overrides)
    except errors.ConfigError as exc:
        print(f"agent: {exc.message}", file=sys.stderr)
        return 2
    dlog.setup("agent", cfg.log_file)
    try:
        asyncio.run(run(cfg))
    except errors.DrlabError as exc:
        dlog.get("drlab.agent").error("agent_failed", code=exc.code, error=exc.message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
