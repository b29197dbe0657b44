"""``python -m ps --config FILE [--set key=value ...]``: run the process server until SIGTERM."""

from __future__ import annotations

import sys

from common import daemon
from common.config import PSConfig
from ps.service import PSService


def main(argv: list[str] | None = None) -> int:
    return daemon.main("ps", "drlab process server", PSConfig, PSService, argv)


if __name__ == "__main__":
    sys.exit(main())
