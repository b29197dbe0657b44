"""``python -m mt --config FILE [--set key=value ...]``: run the master target until SIGTERM."""

from __future__ import annotations

import sys

from common import daemon
from common.config import MTConfig
from mt.service import MTService


def main(argv: list[str] | None = None) -> int:
    return daemon.main("mt", "drlab master target", MTConfig, MTService, argv)


if __name__ == "__main__":
    sys.exit(main())
