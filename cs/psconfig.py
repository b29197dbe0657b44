"""A process server's upload route and speed, held by the CS and sent in the PS's settings document.

- **Proxy**: ``{url, username?, password?}``. The URL is ``http://HOST:PORT`` (an HTTP CONNECT
  proxy; TLS to the MT is tunnelled through it), with no credentials, path or query in it. A
  password needs a username. The password is sealed with the account store's key
  (cs/accounts.py, associated data ``ps-proxy:<ps id>``): the database, the audit log, the API and
  the logs never hold it in clear; only the PS's settings document carries it (over mTLS).
- **Bandwidth**: ``{bytes_per_s, windows?}`` (common/bandwidth.py), 0 = no limit.

The document's ``upload`` object is ``{proxy?, bandwidth?}``, absent when the PS has neither.
Every change bumps the settings version, so the PS applies it at run time (ps/uplink.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yarl
from sqlalchemy.ext.asyncio import AsyncSession

from common import bandwidth, errors
from common import logging as dlog
from cs import accounts, model
from cs.db.models import Component
from cs.db.psuplink import PSUplink

log = dlog.get("drlab.cs.psconfig")

MAX_URL = 255
_KEYS: dict[Path, accounts.StoreKey] = {}


def store_key(data_dir: Path) -> accounts.StoreKey:
    """The account store's key (made on first use), cached per data directory."""
    if data_dir not in _KEYS:
        _KEYS[data_dir] = accounts.load_key(data_dir)
    return _KEYS[data_dir]


def _sealed_as(ps_id: str) -> str:
    return f"ps-proxy:{ps_id}"


def proxy_url(value: Any) -> str:
    """``http://HOST:PORT`` (400 on anything else)."""
    rule = "url must be http://HOST:PORT of an HTTP CONNECT proxy (no credentials, path or query)"
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_URL:
        raise errors.BadRequest(rule)
    try:
        url = yarl.URL(value)
        port = url.explicit_port
    except (ValueError, TypeError) as exc:
        raise errors.BadRequest(rule) from exc
    if (url.scheme != "http" or not url.host or port is None or not 1 <= port <= 65535 or url.user is not None
            or url.password is not None or url.path not in ("", "/") or url.query_string or url.fragment):
        raise errors.BadRequest(rule)
    return f"http://{url.host if ':' not in url.host else f'[{url.host}]'}:{port}"


def parse_proxy(body: dict[str, Any]) -> dict[str, Any]:
    """``{url, username?, password?}`` checked (pure; 400 names the rule, never the password)."""
    model.body_keys(body, allowed=("url", "username", "password"), required=("url",))
    out: dict[str, Any] = {"url": proxy_url(body["url"]), "username": None, "password": None}
    for field, limit in (("username", accounts.MAX_USERNAME), ("password", accounts.MAX_PASSWORD)):
        if field in body:
            value = body[field]
            if not isinstance(value, str) or not 1 <= len(value) <= limit:
                raise errors.BadRequest(f"{field} must be a string of 1 to {limit} characters")
            out[field] = value
    if out["password"] is not None and out["username"] is None:
        raise errors.BadRequest("a proxy password needs a username")
    if out["username"] is not None and ":" in out["username"]:
        raise errors.BadRequest("a proxy username may not contain ':' (Basic authentication)")
    return out


def parse_bandwidth(body: dict[str, Any]) -> bandwidth.Plan:
    """``{bytes_per_s, windows?}`` checked (pure; 400 naming the bad field)."""
    model.body_keys(body, allowed=("bytes_per_s", "windows"), required=("bytes_per_s",))
    try:
        return bandwidth.parse_plan(body)
    except ValueError as exc:
        raise errors.BadRequest(str(exc)) from exc


def proxy_view(ps_id: str, row: PSUplink | None) -> dict[str, Any]:
    """What the API shows of a proxy: never the password, only whether one is set."""
    url = row.proxy_url if row else None
    return {"ps_id": ps_id, "url": url, "username": row.proxy_username if row and url else None,
            "password_set": bool(row and url and row.proxy_password_enc)}


def bandwidth_view(ps_id: str, row: PSUplink | None) -> dict[str, Any]:
    return {"ps_id": ps_id, "bytes_per_s": row.bytes_per_s if row else 0, "windows": row.windows if row else []}


async def ps_or_404(session: AsyncSession, ps_id: str) -> None:
    comp = await session.get(Component, ps_id)
    if comp is None or comp.role != "ps":
        raise errors.NotFound(f"no process server {ps_id}")


async def _row(session: AsyncSession, ps_id: str) -> PSUplink:
    row = await session.get(PSUplink, ps_id, with_for_update=True)
    if row is None:
        row = PSUplink(ps_id=ps_id, bytes_per_s=0, windows=[], updated_ns=time.time_ns())
        session.add(row)
    return row


async def _drop_if_empty(session: AsyncSession, row: PSUplink) -> PSUplink | None:
    if row.proxy_url is None and row.bytes_per_s == 0 and not row.windows:
        await session.delete(row)
        return None
    return row


async def set_proxy(session: AsyncSession, key: accounts.StoreKey, ps_id: str,
                    fields: dict[str, Any] | None) -> PSUplink | None:
    """Set (``fields``) or clear (None) the proxy of a PS."""
    await ps_or_404(session, ps_id)
    row = await _row(session, ps_id)
    row.proxy_url = fields["url"] if fields else None
    row.proxy_username = fields["username"] if fields else None
    password = fields["password"] if fields else None
    row.proxy_password_enc = key.seal(_sealed_as(ps_id), password) if password else None
    row.updated_ns = time.time_ns()
    return await _drop_if_empty(session, row)


async def set_bandwidth(session: AsyncSession, ps_id: str, plan: bandwidth.Plan) -> PSUplink | None:
    """Set the limit of a PS (``Plan()``: clear it)."""
    await ps_or_404(session, ps_id)
    row = await _row(session, ps_id)
    row.bytes_per_s, row.windows = plan.bytes_per_s, plan.to_json()["windows"]
    row.updated_ns = time.time_ns()
    return await _drop_if_empty(session, row)


async def ps_settings(session: AsyncSession, key_dir: Path, ps_id: str) -> dict[str, Any]:
    """The PS document's ``upload`` object (absent when the PS has no proxy and no limit)."""
    row = await session.get(PSUplink, ps_id)
    if row is None:
        return {}
    upload: dict[str, Any] = {}
    if row.proxy_url:
        proxy: dict[str, Any] = {"url": row.proxy_url}
        if row.proxy_username:
            proxy["username"] = row.proxy_username
        if row.proxy_password_enc:
            try:
                proxy["password"] = store_key(key_dir).open(_sealed_as(ps_id), row.proxy_password_enc)
            except errors.ConfigError:  # another CS's key (a restored database): the proxy will say 407
                log.error("ps_proxy_password_unreadable", ps=ps_id)
        upload["proxy"] = proxy
    if row.bytes_per_s or row.windows:
        upload["bandwidth"] = {"bytes_per_s": row.bytes_per_s, "windows": row.windows}
    return {"upload": upload} if upload else {}
