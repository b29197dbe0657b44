"""The operator dashboard (cs/dashboard/): its page and assets (public: they hold no data; every
figure comes from the JSON APIs, which need a session or a certificate) and ``GET
/v1/dashboard/rpo``, the machines' RPO now and its recent history for the chart."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import web

from common import errors, http
from common import logging as dlog
from cs import dashboard
from cs.api import paging, spec
from cs.dashboard import rpo
from cs.state import STATE, state_of

log = dlog.get("drlab.cs.dashboard")

PAGE = "/dashboard"
PUBLIC_PATHS = (PAGE, f"{PAGE}/", *(f"{PAGE}/{name}" for name in dashboard.ASSETS))
MAX_NS = 2**63 - 1  # since_ns: a signed 64-bit time in ns
SAMPLE_INTERVAL_S = 5.0  # the background sampler; a watched page adds a sample per second at most
HISTORY = web.AppKey("dashboard_rpo_history", rpo.History)
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"}
MACHINE_RPO = spec.obj({"rpo_s": spec.NUM, "threshold_s": spec.NUM,
                        "disks": {"type": "object", "additionalProperties": spec.NUM}})
RPO_ANSWER = spec.obj({"now_ns": spec.INT, "sample_s": spec.NUM,
                       "machines": {"type": "object", "additionalProperties": MACHINE_RPO},
                       "history": spec.array(spec.obj({"t_ns": spec.INT,
                                                       "rpo_s": {"type": "object",
                                                                 "additionalProperties": spec.NUM}}))})


def _file(name: str, content_type: str) -> web.Response:
    body = (dashboard.STATIC_DIR / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)


@spec.route(public=True, tags=("dashboard",))
async def get_page(request: web.Request) -> web.Response:
    """The dashboard's page (HTML); it shows the login form until the caller has a session."""
    return _file(dashboard.INDEX, "text/html")


@spec.route(public=True, tags=("dashboard",))
async def get_asset(request: web.Request) -> web.Response:
    """One of the page's own files (CSS, JS); 404 for any other name."""
    name = request.match_info["name"]
    if name not in dashboard.ASSETS:
        raise errors.NotFound(f"no dashboard file {name[:64]!r}")
    return _file(name, dashboard.ASSETS[name])


def _since(request: web.Request) -> int:
    """``since_ns``: 0 (the default: the whole history) or ns since the epoch in [1, 2**63 - 1];
    400 otherwise (a huge or malformed number too: :func:`paging.bounded_int`)."""
    paging.check_query(request.query, ("since_ns",))
    text = request.query.get("since_ns", "0")
    return 0 if text == "0" else paging.bounded_int(text, "since_ns (ns since the epoch, or 0)", MAX_NS)


@spec.route(roles=spec.ADMIN, query={"since_ns": {"type": "integer", "minimum": 0, "maximum": MAX_NS, "default": 0}},
            response=RPO_ANSWER, tags=("dashboard",))
async def get_rpo(request: web.Request) -> web.Response:
    """Every machine's RPO now (worst disk; disks without a point yet are left out) and the samples
    of the CS's in-memory history taken after ``since_ns``, oldest first.

    The RPO is the health rule's: now minus the disk's latest durable point at its MT. The history
    is this CS process's (kept in memory, a sample every few seconds, more often while watched)."""
    http.require_role(request, "admin")
    since_ns = _since(request)
    now_ns = time.time_ns()
    machines = await rpo.current(state_of(request), now_ns)
    history = request.app[HISTORY]
    history.add(now_ns, machines)
    return web.json_response({"now_ns": now_ns, "sample_s": SAMPLE_INTERVAL_S, "machines": machines,
                              "history": history.since(since_ns)})


async def _sample_forever(app: web.Application) -> None:
    while True:
        await asyncio.sleep(SAMPLE_INTERVAL_S)
        try:
            now_ns = time.time_ns()
            app[HISTORY].add(now_ns, await rpo.current(app[STATE], now_ns))
        except Exception as exc:  # the database may be busy or gone for a moment: next round
            log.warning("dashboard_rpo_sample_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")


async def _sampler(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_sample_forever(app), name="cs-dashboard-rpo-sampler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def add_routes(app: web.Application) -> None:
    app[HISTORY] = rpo.History()
    app.router.add_get(PAGE, get_page)
    app.router.add_get(f"{PAGE}/", get_page)
    app.router.add_get(PAGE + "/{name}", get_asset)
    app.router.add_get("/v1/dashboard/rpo", get_rpo)
    app.cleanup_ctx.append(_sampler)
