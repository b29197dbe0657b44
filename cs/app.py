"""The CS's aiohttp application: deny-by-default auth, JSON errors, every route of the CS API."""

from __future__ import annotations

from aiohttp import web

from common.http import make_app
from cs.api import alerts, bookmarks, components, disks, jobs, machines, register
from cs.state import STATE, CSState


def build_app(state: CSState) -> web.Application:
    app = make_app(allow=register.PUBLIC_PATHS)
    app[STATE] = state
    register.add_routes(app)
    components.add_routes(app)
    disks.add_routes(app)
    jobs.add_routes(app)
    alerts.add_routes(app)
    bookmarks.add_routes(app)
    machines.add_routes(app)
    return app
