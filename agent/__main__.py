"""``python -m agent --config FILE [--set key=value ...]``: run the mobility agent until SIGTERM."""

from __future__ import annotations

import sys

from agent.service import AgentService
from common import daemon
from common.config import AgentConfig


def main(argv: list[str] | None = None) -> int:
    return daemon.main("agent", "drlab mobility agent", AgentConfig, AgentService, argv)


if __name__ == "__main__":
    sys.exit(main())
