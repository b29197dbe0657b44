"""The admin routes of the data model (sites, machines, policies, recovery plans, accounts, audit)."""

from __future__ import annotations

from aiohttp import web

from cs.api import accounts, audit, hypervisors, plans, policies, psconfig, sites
from cs.api import failover_props as failover_props_api
from cs.api import ps_lifecycle as ps_lifecycle_api


def add_routes(app: web.Application) -> None:
    audit.add_routes(app)
    sites.add_routes(app)
    policies.add_routes(app)
    plans.add_routes(app)
    accounts.add_routes(app)
    hypervisors.add_routes(app)  # hypervisors, inventory, push install (and the PS's side)
    psconfig.add_routes(app)  # a PS's upload proxy and bandwidth limit
    ps_lifecycle_api.add_routes(app)  # DELETE /v1/ps/{id}, POST /v1/ps/{id}/purge
    failover_props_api.add_routes(app)  # /v1/machines/{id}/failover-properties
