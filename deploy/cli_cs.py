"""``drlab cs`` subcommands for certificates, the passphrase and backups:

    drlab cs revoke COMPONENT_ID [--data-dir CS_DIR]      (admin API: refused everywhere at once)
    drlab cs passphrase rotate [--data-dir CS_DIR]        (new passphrase, shown once, saved 0600;
                                                          default: the lab's CS dir, from --dir/--topology)
    drlab cs backup --data-dir CS_DIR --out FILE          (online; encrypted)
    drlab cs restore --from FILE --data-dir NEW_DIR       (into a fresh data dir / database)

Passwords are read from a file (``--password-file``) or stdin (``--password-stdin``), never
from the command line; a backup defaults to the CS passphrase file of ``--data-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from common import errors, tls


def _config(args: argparse.Namespace) -> Any:
    from common.config import CSConfig

    return CSConfig(data_dir=Path(args.data_dir), db_url=args.db_url or "")


def _password(args: argparse.Namespace, default_file: Path | None) -> Any:
    from cs.backup_archive import Password

    if args.password_stdin:
        return Password.from_text(sys.stdin.readline())
    path = Path(args.password_file) if args.password_file else default_file
    if path is None:
        raise errors.ConfigError("give --password-file FILE or --password-stdin")
    try:
        return Password.from_text(path.read_text())
    except OSError as exc:
        raise errors.ConfigError(f"cannot read the password file {path}: {exc.strerror}") from exc


def cmd_revoke(args: argparse.Namespace) -> int:
    from common.http import ApiClient

    if args.data_dir:
        files = tls.IdentityFiles(Path(args.data_dir) / "admin")
        url = args.cs_url or str(files.read_meta()["cs_url"])
    else:
        from deploy.cli_lab import lab_of as _lab

        lab = _lab(args)
        files = tls.IdentityFiles(Path(args.admin_dir)) if args.admin_dir else lab.admin_files
        url = args.cs_url or lab.topology.cs_url

    async def go() -> Any:
        api = ApiClient(url, tls.client_context(files), timeout_s=30.0)
        try:
            return await api.post(f"/v1/components/{args.component_id}/revoke")
        finally:
            await api.close()

    reply = asyncio.run(go())
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        print(f"revoked {len(reply['revoked'])} certificate(s) of {reply['component_id']}; it may come back only "
              "by registering again with the passphrase")
    return 0


def lab_cs_dir(args: argparse.Namespace) -> Path:
    """The CS data dir of the lab named by ``--dir`` / ``--topology`` (deploy/lab.py ``Lab.cs_dir``)."""
    from deploy.cli_lab import lab_of as _lab

    return Path(_lab(args).cs_dir)


def cmd_passphrase_rotate(args: argparse.Namespace) -> int:
    """Rotate in ``--data-dir``, or without it in the lab's CS dir; not an initialised CS: exit 2."""
    from cs import accounts
    from cs.ca import Layout
    from cs.db.engine import Database
    from cs.registration import rotate_passphrase

    if not args.data_dir:
        args.data_dir = str(lab_cs_dir(args))
    cfg = _config(args)
    layout = Layout(cfg.data_dir)
    if not layout.ca_cert.exists():
        raise errors.ConfigError(f"{cfg.data_dir} is not an initialised CS")

    async def go() -> Any:
        db = Database(cfg.database_url())
        try:
            return await rotate_passphrase(db, accounts.load_key(cfg.data_dir))
        finally:
            await db.close()

    passphrase, epoch = asyncio.run(go())
    tls.write_private(layout.passphrase_file, (passphrase.value + "\n").encode())
    print(f"Passphrase rotated (epoch {epoch}). Registrations with the old one are refused; every PS, MT and")
    print("agent must register again with the new one (put it in their passphrase files: they re-register by")
    print("themselves when the CS asks them to; replication keeps running meanwhile).")
    print("New passphrase (shown once; also saved with mode 0600 in", layout.passphrase_file, "):")
    print(passphrase.value)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from cs.backup import backup
    from cs.ca import Layout

    cfg = _config(args)
    password = _password(args, Layout(cfg.data_dir).passphrase_file)
    manifest = asyncio.run(backup(cfg, Path(args.out), password))
    print(f"backed up the CS of {cfg.data_dir} ({manifest['engine']}, {sum(manifest['rows'].values())} rows, "
          f"CA and identities) to {args.out}, encrypted")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from cs.backup import restore

    cfg = _config(args)
    manifest = asyncio.run(restore(Path(args.source), cfg, _password(args, None)))
    print(f"restored the CS backed up at {manifest.get('created_ns')} into {cfg.data_dir}; start it on the "
          "same address and port and the fleet keeps using it")
    return 0


def _password_options(p: argparse.ArgumentParser, default: str) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--password-file", help=f"file holding the archive password (default: {default})")
    group.add_argument("--password-stdin", action="store_true", help="read the archive password from stdin")


def add_parsers(cs: Any) -> None:
    """Register the subcommands on the ``drlab cs`` subparsers."""
    rv = cs.add_parser("revoke", help="revoke a component's certificates (refused by the CS, PS and MT)")
    rv.add_argument("component_id")
    rv.add_argument("--data-dir", default=None, help="the CS data dir (its admin identity and URL)")
    rv.set_defaults(func=cmd_revoke)

    pp = cs.add_parser("passphrase", help="the registration passphrase").add_subparsers(
        dest="passphrase_command", required=True)
    rot = pp.add_parser("rotate", help="a new passphrase; components must register again with it")
    rot.add_argument("--data-dir", default=None, help="the CS data dir (default: the lab's CS dir, from --dir "
                     "and --topology)")
    rot.add_argument("--db-url", default=None, help="database URL (default: SQLite in the data dir)")
    rot.set_defaults(func=cmd_passphrase_rotate)

    bk = cs.add_parser("backup", help="encrypted online backup of the database and the CA")
    bk.add_argument("--data-dir", required=True)
    bk.add_argument("--db-url", default=None, help="database URL (default: SQLite in the data dir)")
    bk.add_argument("--out", required=True)
    _password_options(bk, "the CS passphrase file")
    bk.set_defaults(func=cmd_backup)

    rs = cs.add_parser("restore", help="restore a backup into a fresh data dir (and database)")
    rs.add_argument("--from", dest="source", required=True)
    rs.add_argument("--data-dir", required=True)
    rs.add_argument("--db-url", default=None, help="database URL (default: SQLite in the data dir)")
    _password_options(rs, "none: required")
    rs.set_defaults(func=cmd_restore)
