"""The hypervisor's HTTPS API (HTTP Basic auth; JSON errors ``{code, message}``).

- ``GET /api/vms`` (the admin account) -> ``{"vms": [inventory item]}``.
- ``POST /api/vms/{name}/guest/install-agent`` (that VM's guest administrator), body
  ``{"cs_url": "https://...", "enroll_token": "drlab-enroll-v1...."}`` -> 200
  ``{"installed": true, "pid": int, "restarted": bool}``.

Rules: an unknown VM is 404 (before any credential check: there is no guest to ask), a powered-off
VM 409 ``vm_powered_off`` (its guest cannot answer), then wrong guest credentials 401
``guest_credentials_refused``; a bad body 400; each refusal changes nothing. Installs of one VM are
serialised. The token is never logged or echoed (the 400 for a malformed one does not quote it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import re
from typing import Any

from aiohttp import web

from common import errors
from common import logging as dlog
from common.http import error_middleware, read_json
from deploy import hvvm
from deploy.hvconfig import HypervisorConfig, VMConfig

log = dlog.get("drlab.hypervisor.api")

TOKEN_RE = re.compile(r"^drlab-enroll-v1\.[0-9a-f]{32}\.[A-Za-z0-9_-]{43}\Z")
MAX_URL = 2048


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(username, password) of an ``Authorization: Basic`` header; None if missing or malformed."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, binascii.Error):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


def credentials_match(request: web.Request, username: str, password: str) -> bool:
    """Whether the request's Basic credentials are exactly (username, password), compared in
    constant time; a missing or malformed header does not match."""
    given = basic_credentials(request.headers.get("Authorization", ""))
    if given is None:
        return False
    user_ok = hmac.compare_digest(given[0].encode(), username.encode())
    pass_ok = hmac.compare_digest(given[1].encode(), password.encode())
    return user_ok and pass_ok


def _parse_install(body: dict[str, Any]) -> tuple[str, str]:
    cs_url, token = body.get("cs_url"), body.get("enroll_token")
    if not isinstance(cs_url, str) or not cs_url.startswith("https://") or len(cs_url) > MAX_URL \
            or any(c.isspace() for c in cs_url):
        raise errors.BadRequest("cs_url must be an https:// URL")
    if not isinstance(token, str) or not TOKEN_RE.match(token):
        raise errors.BadRequest("enroll_token must be an enrollment token (drlab-enroll-v1.<id>.<secret>)")
    return cs_url, token


class HypervisorApi:
    """Route handlers over the config and the VMs' launcher."""

    def __init__(self, cfg: HypervisorConfig, launcher: hvvm.Launcher) -> None:
        self.cfg = cfg
        self.launcher = launcher
        self._locks: dict[str, asyncio.Lock] = {}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
        app.router.add_get("/api/vms", self.list_vms)
        app.router.add_post("/api/vms/{name}/guest/install-agent", self.install_agent)
        return app

    async def list_vms(self, request: web.Request) -> web.Response:
        if not credentials_match(request, self.cfg.admin_username, self.cfg.admin_password):
            raise errors.Unauthorized("the hypervisor refused the admin credentials")
        return web.json_response({"vms": [vm.view(hvvm.is_installed(self.cfg.data_dir, vm.name))
                                          for vm in self.cfg.vms]})

    def _guest(self, request: web.Request) -> VMConfig:
        name = request.match_info["name"]
        vm = self.cfg.vm(name)
        if vm is None:
            raise errors.NotFound(f"no VM named {name!r} on this hypervisor")
        if vm.power_state != "on":
            raise errors.Conflict(f"VM {name} is powered off", code="vm_powered_off")
        if not credentials_match(request, vm.guest_username, vm.guest_password):
            raise errors.Unauthorized(f"the guest of VM {name} refused the credentials",
                                      code="guest_credentials_refused")
        return vm

    async def install_agent(self, request: web.Request) -> web.Response:
        vm = self._guest(request)
        cs_url, token = _parse_install(await read_json(request, 64 * 1024))
        async with self._locks.setdefault(vm.name, asyncio.Lock()):
            pid, restarted = await asyncio.to_thread(self._install, vm, cs_url, token)
        log.info("agent_installed", vm=vm.name, pid=pid, restarted=restarted, cs_url=cs_url)
        return web.json_response({"installed": True, "pid": pid, "restarted": restarted})

    def _install(self, vm: VMConfig, cs_url: str, token: str) -> tuple[int, bool]:
        hvvm.make_disks(self.cfg.data_dir, vm)
        restarted = self.launcher.stop(vm.name)
        hvvm.write_agent_files(self.cfg, vm, cs_url, token)
        return self.launcher.start(vm.name), restarted

