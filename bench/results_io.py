"""Where a benchmark's report goes: ``<out>/<name>-<UTC stamp>[-suffix].json`` and ``.md``."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """What a report records of the machine it ran on (load: the 1-minute average at the start)."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}


def write_report(rep: dict[str, Any], markdown: str, out: Path, name: str, suffix: str = "") -> tuple[Path, Path]:
    """Write the JSON report (``rep["time_utc"]`` stamps the names) and its markdown; both paths."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = rep["time_utc"].replace(":", "").replace("+0000", "Z")
    stem = out / f"{name}-{stamp}{'-' + suffix if suffix else ''}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(rep, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def publish(rep: dict[str, Any], markdown: str, out: Path, name: str, suffix: str = "",
            show_json: bool = False) -> tuple[Path, Path]:
    """A benchmark's ``main``: write the report, print it (the JSON too if asked) and where it went."""
    paths = write_report(rep, markdown, out, name, suffix)
    if show_json:
        print(json.dumps(rep, indent=2))
    print(markdown)
    print(f"written: {paths[0]} {paths[1]}", file=sys.stderr)
    return paths
