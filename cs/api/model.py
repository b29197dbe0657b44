"""The admin routes of the data model (sites, machines, policies, recovery plans, accounts, audit)."""

from __future__ import annotations

from aiohttp import web

from cs.api import accounts, audit, hypervisors, plans, policies, sites


def add_routes(app: web.Application) -> None:
    audit.add_routes(app)
    sites.add_routes(app)
    policies.add_routes(app)
    plans.add_routes(app)
    accounts.add_routes(app)
    hypervisors.add_routes(app)  # hypervisors, inventory, push install (and the PS's side)
