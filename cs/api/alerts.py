"""Alerts for the admin: ``GET /v1/alerts?active=1&limit=N&before=CURSOR`` -> ``{items, next}``."""

from __future__ import annotations

from aiohttp import web

from common import errors, http
from cs import alerts
from cs.api import paging, spec
from cs.state import state_of

QUERY = ("active", "limit", "before", "cursor")
ALERT = spec.obj({"alert_id": spec.INT, "code": spec.STR, "severity": {"enum": ["warning", "critical"]},
                  "source_id": spec.STR, "disk_id": spec.nullable(spec.STR), "message": spec.STR,
                  "raised_ns": spec.INT, "cleared_ns": spec.nullable(spec.INT)},
                 required=("alert_id", "code", "severity", "source_id", "message", "raised_ns"))


def _flag(text: str | None) -> bool | None:
    if text is None:
        return None
    if text not in ("0", "1"):
        raise errors.BadRequest("active must be 1 (open alerts) or 0 (cleared ones)")
    return text == "1"


def _int(text: str | None, what: str, default: int | None, high: int) -> int | None:
    if text is None:
        return default
    return paging.bounded_int(text, what, high)


@spec.route(roles=spec.ADMIN, response=spec.page_of(ALERT), tags=("alerts",),
            query={**spec.PAGE_QUERY, "active": {"enum": ["0", "1"]},
                   "before": {"type": "string", "description": "the same as cursor (older name)"}})
async def get_alerts(request: web.Request) -> web.Response:
    """Alerts, newest first, a page at a time (``active=1``: open ones, ``0``: cleared ones)."""
    http.require_role(request, "admin")
    unknown = sorted(set(request.query) - set(QUERY))
    if unknown:
        raise errors.BadRequest(f"unknown query parameter {unknown[0][:64]!r}; known: {', '.join(QUERY)}")
    active = _flag(request.query.get("active"))
    limit = _int(request.query.get("limit"), "limit", 100, alerts.MAX_PAGE)
    before = _int(request.query.get("cursor", request.query.get("before")), "cursor", None, 2**63 - 1)
    assert limit is not None
    return web.json_response(await alerts.listing(state_of(request), active=active, limit=limit, before=before))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/alerts", get_alerts)
