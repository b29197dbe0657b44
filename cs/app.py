"""The CS's aiohttp application: deny-by-default auth, JSON errors, every route of the CS API."""

from __future__ import annotations

from aiohttp import web

from common.http import make_app
from cs import operators, revocation
from cs.api import alerts, bookmarks, components, dashboard, disks, jobs, machines, register
from cs.api import metrics as api_metrics
from cs.api import model as api_model
from cs.api import openapi as api_openapi
from cs.api import operators as api_operators
from cs.api import ps as api_ps
from cs.ca import install_renewal
from cs.state import STATE, CSState


def build_app(state: CSState) -> web.Application:
    app = make_app(allow=(*register.PUBLIC_PATHS, *api_operators.PUBLIC_PATHS, *api_openapi.PUBLIC_PATHS,
                          *dashboard.PUBLIC_PATHS),
                   sessions=lambda token: operators.session_identity(state, token))
    app[STATE] = state
    revocation.install(app, state)  # revoked and stale (old passphrase) certificates
    install_renewal(app, state.ca, state.cfg)  # the CS's own and the admin's certificates
    register.add_routes(app)
    components.add_routes(app)
    disks.add_routes(app)
    jobs.add_routes(app)
    alerts.add_routes(app)
    bookmarks.add_routes(app)
    machines.add_routes(app)
    api_ps.add_routes(app)  # PS switch and load balance (jobs)
    api_metrics.add_routes(app)  # GET /metrics (Prometheus)
    api_operators.add_routes(app)
    dashboard.add_routes(app)  # the operator dashboard's page and its RPO history
    api_model.add_routes(app)  # sites, machines, policies, plans, accounts, audit log; the audit actor
    api_openapi.add_routes(app)  # last: documents every route present at startup
    return app
