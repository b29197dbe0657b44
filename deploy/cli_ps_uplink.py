"""``drlab ps proxy set|clear|show`` and ``drlab ps bandwidth set|clear|show``: a process server's
upload proxy and bandwidth limit, held by the CS (cs/psconfig.py) and applied by the PS at run time.

The proxy password is read from stdin (one line) when ``--username`` is given, never from the
command line. Speeds are in MB/s (1 MB = 1,000,000 bytes); a window is ``HH:MM-HH:MM=MB_S`` in the
PS's local time.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from common import errors

MB = 1_000_000


def _api(args: argparse.Namespace, fn: Any) -> Any:
    from deploy.cli import _admin_api

    return _admin_api(args, fn)


def mb_s(text: str) -> int:
    """Bytes/s from a decimal MB/s (pure; BadRequest on a negative or malformed number)."""
    try:
        value = float(text)
    except ValueError as exc:
        raise errors.BadRequest(f"{text!r} is not a number of MB/s") from exc
    if not 0 <= value <= 1_000_000:
        raise errors.BadRequest(f"{text!r} MB/s is out of range (0 to 1000000)")
    return int(round(value * MB))


def window(text: str) -> dict[str, Any]:
    """``08:00-18:00=5`` -> ``{"from": "08:00", "to": "18:00", "bytes_per_s": 5000000}`` (pure)."""
    span, sep, speed = text.partition("=")
    start, dash, end = span.partition("-")
    if not sep or not dash:
        raise errors.BadRequest(f"window {text!r} is not HH:MM-HH:MM=MB_S")
    return {"from": start.strip(), "to": end.strip(), "bytes_per_s": mb_s(speed.strip())}


def proxy_body(args: argparse.Namespace, stdin: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"url": args.url}
    if args.username:
        body["username"] = args.username
        password = (stdin or sys.stdin).readline().rstrip("\r\n")
        if password:
            body["password"] = password
    return body


def speed(bytes_per_s: int) -> str:
    return f"{bytes_per_s / MB:g} MB/s" if bytes_per_s else "no limit"


def describe(reply: dict[str, Any]) -> list[str]:
    """The CS's answer as lines for a person (pure)."""
    if "url" in reply:
        if not reply["url"]:
            return [f"PS {reply['ps_id']}: direct (no proxy from the CS)"]
        user = f", user {reply['username']}" if reply["username"] else ""
        password = ", password set" if reply["password_set"] else ""
        return [f"PS {reply['ps_id']}: proxy {reply['url']}{user}{password}"]
    return [f"PS {reply['ps_id']}: {speed(reply['bytes_per_s'])}"] + [
        f"  {w['from']}-{w['to']}: {speed(w['bytes_per_s'])}" for w in reply["windows"]]


def _show(reply: Any, as_json: bool) -> int:
    print(json.dumps(reply, indent=2) if as_json else "\n".join(describe(reply)))
    return 0


def _call(args: argparse.Namespace, method: str, topic: str, body: Any = None) -> int:
    path = f"/v1/ps/{args.ps_id}/{topic}"
    reply = _api(args, lambda api: api.request(method, path, json_body=body))[1]
    return _show(reply, args.json)


def cmd_proxy(args: argparse.Namespace) -> int:
    if args.action == "set":
        return _call(args, "PUT", "proxy", proxy_body(args))
    return _call(args, "DELETE" if args.action == "clear" else "GET", "proxy")


def cmd_bandwidth(args: argparse.Namespace) -> int:
    if args.action == "set":
        body = {"bytes_per_s": mb_s(args.mb_s), "windows": [window(w) for w in args.windows or []]}
        return _call(args, "PUT", "bandwidth", body)
    return _call(args, "DELETE" if args.action == "clear" else "GET", "bandwidth")


def add_parsers(psub: Any) -> None:
    proxy = psub.add_parser("proxy", help="the PS's upload proxy (HTTP CONNECT): set, clear, show")
    psx = proxy.add_subparsers(dest="action", required=True)
    pset = psx.add_parser("set", help="upload through http://HOST:PORT (password from stdin with --username)")
    pset.add_argument("--url", required=True, help="http://HOST:PORT of the proxy")
    pset.add_argument("--username", default=None, help="Basic credentials; the password is read from stdin")
    for action, parser in (("set", pset), ("clear", psx.add_parser("clear", help="upload direct again")),
                           ("show", psx.add_parser("show", help="the proxy (never its password)"))):
        parser.add_argument("ps_id", help="the process server")
        parser.set_defaults(func=cmd_proxy, action=action)
    bw = psub.add_parser("bandwidth", help="the PS's upload bandwidth limit: set, clear, show")
    bwx = bw.add_subparsers(dest="action", required=True)
    bset = bwx.add_parser("set", help="limit the uploads (MB/s, 0: none), optionally by time of day")
    bset.add_argument("--mb-s", required=True, help="the limit outside the windows, MB/s (0: none)")
    bset.add_argument("--window", dest="windows", action="append", default=None, metavar="HH:MM-HH:MM=MB_S",
                      help="a different limit in this span of the PS's local time (repeatable)")
    for action, parser in (("set", bset), ("clear", bwx.add_parser("clear", help="no limit")),
                           ("show", bwx.add_parser("show", help="the limit and its windows"))):
        parser.add_argument("ps_id", help="the process server")
        parser.set_defaults(func=cmd_bandwidth, action=action)
