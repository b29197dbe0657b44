"""Run ``drlab`` in-process against a test CS (tests/conftest.py ``cs_env``) with its admin identity."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from deploy import cli


def admin_argv(env: Any, *argv: str) -> list[str]:
    return ["--cs-url", env.url, "--admin-dir", str(env.admin_files.directory), *argv]


async def drlab(env: Any, *argv: str) -> int:
    """The exit status of ``drlab ARGV`` (run in a thread: the CS serves on this loop)."""
    return await asyncio.to_thread(cli.main, admin_argv(env, *argv))


def json_out(out: str) -> Any:
    """The JSON document the command printed (the in-process CS may log lines to stdout too)."""
    start = min(i for i in (out.find("\n{"), out.find("\n["), 0 if out[:1] in "{[" else -1) if i >= 0)
    return json.JSONDecoder().raw_decode(out[start:].lstrip())[0]
