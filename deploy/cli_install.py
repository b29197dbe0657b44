"""Unattended install and re-registration of a component, as the documented unified setup does:

    drlab ps install --cs ADDRESS --passphrase-file FILE --data-port 9443 --dir DATA [--address A]
                     [--host-id H] [--proxy URL] [--start]
    drlab mt install ... --data-port P --control-port P [--datastore DIR]
    drlab agent install ... --disk NAME=PATH:SIZE (repeatable)
    drlab ps|mt reregister --dir DATA [--cs ADDRESS] --passphrase-file FILE

Rules:
- ``install`` registers with the CS at once (the passphrase proof, common/component.py) and only
  then writes ``DATA/<role>.toml`` (mode 0600). A wrong passphrase (401, or a CS that fails its own
  proof), an unreachable CS or an unreadable passphrase file prints one line and exits 1, leaving
  nothing behind: no identity directory, no config file, no data directory it created (the CS
  stores nothing for a refused proof). A data directory already holding an identity is refused:
  that component re-registers instead.
- ``reregister`` (after ``drlab cs passphrase rotate``, or to another CS) registers again with the
  identity's role, host id, address and ports, so the CS keeps the component id; the cache or
  journal is not touched. The config's ``cs_url`` and ``passphrase_file`` are updated after the
  registration succeeded. A running daemon picks the new certificate up at its next restart.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common import component, errors, tls
from common.config import CS_PORT, AgentConfig, ComponentConfig, MTConfig, PSConfig, dump_toml, from_dict
from deploy import cli_service

CONFIGS: dict[str, type[ComponentConfig]] = {"ps": PSConfig, "mt": MTConfig, "agent": AgentConfig}


class InstallFailed(Exception):
    """What the command prints (one line) before exiting 1."""


def cs_url_of(address: str) -> str:
    """``host``, ``host:port`` or ``https://host[:port]`` as the CS's URL (pure)."""
    text = address.strip().rstrip("/")
    if not text:
        raise InstallFailed("--cs needs the configuration server's address")
    if "://" in text:
        if not text.startswith("https://"):
            raise InstallFailed(f"the configuration server is reached over https, not {text.split(':', 1)[0]}")
        text = text[len("https://"):]
    try:
        parts = urlsplit(f"https://{text}")
        port = parts.port or CS_PORT
    except ValueError as exc:
        raise InstallFailed(f"--cs {address!r}: {exc}") from exc
    if not parts.hostname or parts.path or parts.query:
        raise InstallFailed(f"--cs {address!r} is not host, host:port or https://host:port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}:{port}"


def default_host_id(role: str) -> str:
    """The machine's host name, reduced to what the CS accepts as a host id (pure but for the name)."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:48].strip("-._")
    return name or role


def parse_disk(text: str) -> dict[str, Any]:
    """``NAME=PATH:SIZE`` (SIZE in bytes, or with a K/M/G suffix) as an agent disk table (pure)."""
    name, eq, rest = text.partition("=")
    path, colon, size = rest.rpartition(":")
    if not eq or not colon or not name or not path:
        raise InstallFailed(f"--disk takes NAME=PATH:SIZE, not {text!r}")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(size[-1:].upper(), 1)
    digits = size[:-1] if scale > 1 else size
    if not digits.isdigit() or int(digits) <= 0:
        raise InstallFailed(f"--disk {text!r}: size {size!r} is not a positive number of bytes")
    return {"name": name, "path": str(Path(path).resolve()), "size_bytes": int(digits) * scale}


def config_of(role: str, args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """The config file's keys for ``role`` from the command line (pure)."""
    out: dict[str, Any] = {"data_dir": str(data_dir), "cs_url": cs_url_of(args.cs),
                           "passphrase_file": str(Path(args.passphrase_file).resolve()),
                           "host_id": args.host_id or default_host_id(role), "address": args.address,
                           "log_file": str(data_dir / f"{role}.log")}  # JSON lines; the console text goes to ROLE.out
    if role in ("ps", "mt"):
        out["listen_host"] = args.address
        out["data_port"] = args.data_port
    if role == "ps" and args.proxy:
        out["upload_proxy"] = args.proxy
    if role == "mt":
        out["control_port"] = args.control_port
        if args.datastore:
            out["datastore_dir"] = str(Path(args.datastore).resolve())
    if role == "agent":
        out["socket_path"] = str(data_dir / "agent.sock")
        out["disks"] = [parse_disk(d) for d in args.disk or []]
    return out


def parse_sets(items: list[str]) -> dict[str, str]:
    """``--set key=value`` (repeatable): more keys of the config file, checked like the daemon's own
    ``--set`` (an unknown key or a bad value fails the install before anything is registered; pure)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise errors.ConfigError(f"--set {item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def ports_of(role: str, values: dict[str, Any]) -> dict[str, int]:
    if role == "ps":
        return {"data": int(values["data_port"])}
    if role == "mt":
        return {"data": int(values["data_port"]), "control": int(values["control_port"])}
    return {}


def _failure(exc: BaseException, cs_url: str) -> str:
    if isinstance(exc, errors.Unauthorized):
        return f"registration refused by {cs_url}: {exc.message} (check the passphrase file)"
    if isinstance(exc, errors.DrlabError):
        return f"cannot register with {cs_url}: {exc.message}"
    if isinstance(exc, OSError):
        return f"cannot read {getattr(exc, 'filename', None) or 'a file'}: {exc.strerror or exc}"
    return f"cannot register with {cs_url}: {type(exc).__name__}"


async def _register(cfg: ComponentConfig, role: str, ports: dict[str, int]) -> dict[str, Any]:
    files = await component.ensure_identity(cfg, role, ports)
    return files.read_meta()


def install(role: str, args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """Register, then write the config; on any failure undo what this call created."""
    data_dir = Path(args.data_dir).resolve()
    identity = data_dir / "identity"
    config_path = data_dir / f"{role}.toml"
    if tls.IdentityFiles(identity).exists():
        raise InstallFailed(f"{data_dir} already holds a registered {role}: use drlab {role} reregister")
    values = config_of(role, args, data_dir)
    try:
        overrides = parse_sets(args.set or [])
        cfg = from_dict(CONFIGS[role], {**values, **overrides})
    except errors.DrlabError as exc:
        raise InstallFailed(exc.message) from exc
    values.update({k: _plain(getattr(cfg, k)) for k in overrides})  # typed as the config reads them
    cfg = dataclasses.replace(cfg, request_timeout_s=args.timeout_s)
    created = [p for p in (data_dir, identity) if not p.exists()]
    had_config = config_path.exists()
    try:
        meta = asyncio.run(_register(cfg, role, ports_of(role, values)))
        data_dir.mkdir(parents=True, exist_ok=True)
        tls.write_private(config_path, dump_toml(values).encode())
    except (errors.DrlabError, OSError) as exc:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
        if not had_config:
            config_path.unlink(missing_ok=True)
        raise InstallFailed(_failure(exc, values["cs_url"])) from exc
    return meta, config_path


def cmd_install(args: argparse.Namespace) -> int:
    role = args.install_role
    try:
        meta, config_path = install(role, args)
    except InstallFailed as exc:
        print(f"drlab: error: {exc}", file=sys.stderr)
        return 1
    print(f"registered {role} {meta['component_id']} (host id {meta['host_id']}) with {meta['cs_url']}")
    print(f"config: {config_path}")
    if not args.start:
        print(f"start it with: drlab {role} start --dir {config_path.parent}")
        return 0
    try:
        print(f"started: pid {cli_service.Service(role, config_path.parent).start()}")
    except cli_service.ServiceError as exc:
        print(f"drlab: error: {exc}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------ re-registration


def reregister(role: str, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(old identity meta, new meta); the config is rewritten only after success."""
    data_dir = Path(args.data_dir).resolve()
    config_path = data_dir / f"{role}.toml"
    files = tls.IdentityFiles(data_dir / "identity")
    if not files.exists():
        raise InstallFailed(f"{data_dir} holds no registered {role}: use drlab {role} install")
    try:
        values = tomllib.loads(config_path.read_text()) if config_path.exists() else {}
        old = files.read_meta()
        credential = component.read_credential(ComponentConfig(passphrase_file=Path(args.passphrase_file)))
    except (OSError, ValueError) as exc:
        raise InstallFailed(f"cannot read {getattr(exc, 'filename', None) or config_path}: {exc}") from exc
    if str(old.get("role")) != role or "ports" not in old:
        raise InstallFailed(f"the identity in {data_dir} is not a {role}'s (or predates recorded ports)")
    cs_url = cs_url_of(args.cs) if args.cs else str(values.get("cs_url") or old["cs_url"])
    assert credential is not None
    try:
        new = asyncio.run(component.register(
            cs_url, credential, role=role, host_id=str(old.get("host_id") or role),
            address=str(old.get("address") or values.get("address") or "127.0.0.1"),
            ports={k: int(v) for k, v in dict(old["ports"]).items()}, files=files, timeout_s=args.timeout_s))
    except errors.DrlabError as exc:
        raise InstallFailed(_failure(exc, cs_url)) from exc
    if config_path.exists():
        values.update(cs_url=cs_url, passphrase_file=str(Path(args.passphrase_file).resolve()))
        tls.write_private(config_path, dump_toml(values).encode())
    return old, new


def cmd_reregister(args: argparse.Namespace) -> int:
    role = args.install_role
    try:
        old, new = reregister(role, args)
    except InstallFailed as exc:
        print(f"drlab: error: {exc}", file=sys.stderr)
        return 1
    same = old["component_id"] == new["component_id"]
    print(f"re-registered {role} {new['component_id']} with {new['cs_url']}"
          + ("" if same else f" (a new id: the component was {old['component_id']} at {old['cs_url']})"))
    print(f"restart it to use the new certificate: drlab {role} restart --dir {Path(args.data_dir).resolve()}")
    return 0


# ------------------------------------------------------------------ parsers


def _install_parser(sub: Any, role: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("install", help=f"register a {role} with the CS and write its config")
    p.add_argument("--cs", required=True, metavar="ADDRESS", help="the CS: host, host:port or https://host:port")
    p.add_argument("--passphrase-file", required=True, help="a file holding the CS's passphrase")
    p.add_argument("--dir", dest="data_dir", required=True, help="the component's data directory")
    p.add_argument("--address", default="127.0.0.1", help="the address other components reach it at")
    p.add_argument("--host-id", default="", help="its host id (default: the host name); the CS keys it by this")
    p.add_argument("--timeout-s", type=float, default=30.0, help="how long a request to the CS may take")
    p.add_argument("--start", action="store_true", help="start the daemon detached once registered")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="another key of its config file (repeatable), e.g. heartbeat_interval_s=5")
    p.set_defaults(func=cmd_install, install_role=role)
    return p


def _reregister_parser(sub: Any, role: str) -> None:
    p = sub.add_parser("reregister", help=f"register the {role} again (new passphrase or CS), keeping its data")
    p.add_argument("--dir", dest="data_dir", required=True, help="the component's data directory")
    p.add_argument("--cs", default=None, metavar="ADDRESS", help="another CS address (default: the config's)")
    p.add_argument("--passphrase-file", required=True, help="a file holding the CS's (new) passphrase")
    p.add_argument("--timeout-s", type=float, default=30.0, help="how long a request to the CS may take")
    p.set_defaults(func=cmd_reregister, install_role=role)


def add_ps_parsers(psub: Any) -> None:
    """``drlab ps install|reregister`` (called from deploy/cli_ps.py)."""
    p = _install_parser(psub, "ps")
    p.add_argument("--data-port", type=int, default=9443, help="the port agents send their batches to")
    p.add_argument("--proxy", default="", metavar="URL", help="uploads go through this HTTP CONNECT proxy")
    _reregister_parser(psub, "ps")
    cli_service.add_parsers(psub, "ps")


def add_parsers(sub: Any) -> None:
    """``drlab mt install|reregister`` and ``drlab agent install`` (called from deploy/cli.py)."""
    mt = sub.add_parser("mt", help="master targets: install, re-register, start, stop")
    msub = mt.add_subparsers(dest="mt_command", required=True)
    p = _install_parser(msub, "mt")
    p.add_argument("--data-port", type=int, default=9443, help="the port PSs upload batches to")
    p.add_argument("--control-port", type=int, default=9080, help="the control port (recovery, views)")
    p.add_argument("--datastore", default="", metavar="DIR", help="where existing disks may be adopted as replicas")
    _reregister_parser(msub, "mt")
    cli_service.add_parsers(msub, "mt")
    agent = sub.add_parser("agent", help="agents: install, start, stop")
    asub = agent.add_subparsers(dest="agent_command", required=True)
    p = _install_parser(asub, "agent")
    p.add_argument("--disk", action="append", default=None, metavar="NAME=PATH:SIZE",
                   help="a protected disk (repeatable); SIZE in bytes or with K/M/G")
    cli_service.add_parsers(asub, "agent")
