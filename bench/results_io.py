"""Where a benchmark's report goes: ``<out>/<name>-<UTC stamp>[-suffix].json`` and ``.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(rep: dict[str, Any], markdown: str, out: Path, name: str, suffix: str = "") -> tuple[Path, Path]:
    """Write the JSON report (``rep["time_utc"]`` stamps the names) and its markdown; both paths."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = rep["time_utc"].replace(":", "").replace("+0000", "Z")
    stem = out / f"{name}-{stamp}{'-' + suffix if suffix else ''}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(rep, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path
