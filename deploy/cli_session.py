"""``drlab operator login|logout``: an operator's session (``POST /v1/login`` / ``POST /v1/logout``)
for scripts that call the API with a bearer token instead of the admin certificate.

    drlab operator login NAME --token-file FILE     (password: one stdin line, or a prompt)
    drlab operator logout --token-file FILE         (the token stops working; FILE is removed)

Rules: the token is a secret: it is written to ``FILE`` with mode 0600 and never printed (``--json``
prints the CS's answer with ``token`` replaced by ``token_file``). The CS is verified against the
admin identity's CA (``--admin-dir`` or the lab's) but no certificate is presented: a session is
the operator's, not the admin certificate's. A wrong name or password is the CS's 401 (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import errors, tls


def _password() -> str:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
    if not password:
        raise errors.BadRequest("no password given")
    return password


def _call(args: argparse.Namespace, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    """POST ``path`` over TLS checked against the admin identity's CA, without a client certificate."""
    from common.http import ApiClient
    from deploy.cli_lab import lab_of as _lab

    lab = _lab(args)  # like deploy/cli.py _admin_api: the lab's unless --admin-dir / --cs-url say otherwise
    files = tls.IdentityFiles(Path(args.admin_dir)) if args.admin_dir else lab.admin_files
    url = args.cs_url or lab.topology.cs_url
    try:
        ca_pem = files.ca.read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read the CA certificate {files.ca}: {exc.strerror}") from exc

    async def go() -> Any:
        api = ApiClient(url, tls.client_context(None, ca_pem=ca_pem), timeout_s=30.0)
        try:
            return await api.post(path, body, headers=headers)
        finally:
            await api.close()

    return asyncio.run(go())


def cmd_login(args: argparse.Namespace) -> int:
    reply = dict(_call(args, "/v1/login", {"name": args.name, "password": _password()}))
    path = Path(args.token_file)
    tls.write_private(path, (reply.pop("token") + "\n").encode())
    reply["token_file"] = str(path)
    print(json.dumps(reply, indent=2) if args.json else
          f"operator {reply['name']} ({reply['role']}) logged in; session token in {path} (mode 0600) until "
          f"{_when(reply['expires_ns'])}")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    path = Path(args.token_file)
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read the token file {path}: {exc.strerror}") from exc
    if not token:
        raise errors.BadRequest(f"{path} holds no session token")
    reply = _call(args, "/v1/logout", {}, headers={"Authorization": f"Bearer {token}"})
    path.unlink(missing_ok=True)
    print(json.dumps(reply, indent=2) if args.json else f"logged out; {path} removed")
    return 0


def _when(ns: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if isinstance(ns, int) else "-"


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def add_parsers(sub: Any) -> None:
    """Adds ``login`` and ``logout`` to ``drlab operator`` (deploy/cli_operators.py makes it first)."""
    osub = _subparsers(sub.choices["operator"])
    li = osub.add_parser("login", help="open an operator session; its bearer token goes to --token-file (0600)")
    li.add_argument("name")
    li.add_argument("--token-file", required=True, help="where to write the session token (mode 0600)")
    li.set_defaults(func=cmd_login)
    lo = osub.add_parser("logout", help="end the session whose token --token-file holds, then remove the file")
    lo.add_argument("--token-file", required=True)
    lo.set_defaults(func=cmd_logout)
