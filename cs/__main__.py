"""``python -m cs --config FILE [--set key=value ...]``: run the configuration server until
SIGTERM or SIGINT, then stop cleanly."""

from __future__ import annotations

import sys

from common import daemon
from common.config import CSConfig
from cs.service import CSService


def main(argv: list[str] | None = None) -> int:
    return daemon.main("cs", "drlab configuration server", CSConfig, CSService, argv)


if __name__ == "__main__":
    sys.exit(main())
