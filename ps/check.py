"""Troubleshooting routes of the PS data app (HTTPS 9443), for ``drlab ps check`` and browsers.

- ``GET /`` (with or without a certificate: a browser): 400 Bad Request, a JSON error saying this
  is the data port (common/http.py answers ``/`` before authentication; :data:`ROOT_MESSAGE`).
  The TLS server asks for a client certificate but does not require one at the handshake
  (``CERT_OPTIONAL``, common/tls.py), so a browser completes it (after accepting the certificate
  warning: the PS's certificate is issued by the CS's own CA) and gets the 400.
- ``GET /v1/check`` (admin certificate): 200 ``{ok, role, component_id, time_ns}`` — the
  authentication step.
- ``PUT /v1/check/upload/{id}`` (admin): stores the body (at most ``MAX_BYTES``) as a scratch
  file ``{data_dir}/check/{id}`` — next to the batch cache on the same filesystem, never in a
  disk's stream nor in the cache directory (whose subdirectories are disks). 201 ``{id, bytes,
  sha256}``. ``DELETE`` of the same path removes it (200 ``{id, removed: true}``, 404 if absent).
  ``id``: 1–64 characters ``[a-z0-9-]``, else 400. At most ``MAX_FILES`` scratch files at once
  (409 beyond): a check that died before its removal cannot fill the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from pathlib import Path

from aiohttp import web

from common import errors
from common.http import ROOT_HINT, identity, read_body, require_role

ROOT_MESSAGE = ("this is the process server's data port (HTTPS): it takes change batches from authenticated "
                "agents and serves no pages; the HTTPS connection itself works")
MAX_BYTES = 1 << 20
MAX_FILES = 16
SCRATCH: web.AppKey[Path] = web.AppKey("ps_check_scratch", Path)
COMPONENT: web.AppKey[str] = web.AppKey("ps_check_component", str)
_ID = re.compile(r"^[a-z0-9-]{1,64}\Z")


def install(app: web.Application, scratch: Path, component_id: str = "") -> web.Application:
    """Add the routes to the data app."""
    app[SCRATCH] = scratch
    app[COMPONENT] = component_id
    app[ROOT_HINT] = ROOT_MESSAGE
    app.router.add_get("/v1/check", get_check)
    app.router.add_put("/v1/check/upload/{check_id}", put_upload)
    app.router.add_delete("/v1/check/upload/{check_id}", delete_upload)
    return app


async def get_check(request: web.Request) -> web.Response:
    require_role(request, "admin")
    return web.json_response({"ok": True, "role": "ps", "component_id": request.app[COMPONENT],
                              "caller_role": identity(request).role, "time_ns": time.time_ns()})


def _target(request: web.Request) -> Path:
    require_role(request, "admin")
    check_id = request.match_info["check_id"]
    if not _ID.match(check_id):
        raise errors.BadRequest("the check id must be 1-64 characters of a-z, 0-9 and '-'")
    return request.app[SCRATCH] / check_id


def _store(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() and sum(1 for _ in path.parent.iterdir()) >= MAX_FILES:
        raise errors.Conflict(f"{MAX_FILES} check uploads are stored already: remove them first")
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def put_upload(request: web.Request) -> web.Response:
    path = _target(request)
    data = await read_body(request, MAX_BYTES)
    await asyncio.to_thread(_store, path, data)
    return web.json_response({"id": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
                             status=201)


async def delete_upload(request: web.Request) -> web.Response:
    path = _target(request)
    try:
        await asyncio.to_thread(path.unlink)
    except FileNotFoundError as exc:
        raise errors.NotFound(f"no check upload {path.name!r}") from exc
    return web.json_response({"id": path.name, "removed": True})
