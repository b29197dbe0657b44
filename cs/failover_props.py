"""A machine's failover properties (issue 7, point 8): the name, size and network of the machine a
failover boots in the target site, validated when set.

Rules (the validators are pure):

- ``target_name``: 1-63 characters, letters, digits and hyphens (ASCII), starting and ending with a
  letter or digit (the documented server-name rule). Default: none (the failed-over machine is
  ``<machine>-cloud``, deploy/compute.py).
- ``target_size``: one of :data:`SIZES`.
- ``target_network``: a network name: 2-64 characters, letters, digits, ``-``, ``_`` and ``.``,
  starting with a letter or digit and ending with a letter, digit or ``_``.
- ``null`` clears a property; an unknown field, an empty body or any bad value is 400 with the rule
  and changes nothing (all fields are checked before any is stored).

Stored as one ``meta`` row ``failover_props:{machine_id}`` (JSON); shown in ``GET
/v1/machines/{id}``; a failover's and a commit's job result carry them as ``target``
(cs/machine_ops.py), and the drills boot the twin under ``target.name`` when set.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs.db import meta
from cs.db.models import Component

log = dlog.get("drlab.cs.failover_props")

PREFIX = "failover_props:"
FIELDS = ("target_name", "target_size", "target_network")
SIZES = ("Standard_A1", "Standard_A2", "Standard_A3", "Standard_A4", "Standard_D1", "Standard_D2",
         "Standard_D3", "Standard_D4", "Standard_D14")
NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
NETWORK = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9_])")
NAME_RULE = "target_name must be 1-63 letters, digits and hyphens, starting and ending with a letter or digit"
SIZE_RULE = f"target_size must be one of {', '.join(SIZES)}"
NETWORK_RULE = ("target_network must be 2-64 letters, digits, '-', '_' and '.', starting with a letter or digit "
                "and ending with a letter, digit or '_'")


def _matches(pattern: re.Pattern[str], value: Any) -> bool:
    return isinstance(value, str) and value.isascii() and pattern.fullmatch(value) is not None


def check_name(value: Any) -> str:
    if not _matches(NAME, value):
        raise errors.BadRequest(NAME_RULE)
    return str(value)


def check_size(value: Any) -> str:
    if value not in SIZES:
        raise errors.BadRequest(SIZE_RULE)
    return str(value)


def check_network(value: Any) -> str:
    if not _matches(NETWORK, value):
        raise errors.BadRequest(NETWORK_RULE)
    return str(value)


CHECKS = {"target_name": check_name, "target_size": check_size, "target_network": check_network}


def parse(body: dict[str, Any]) -> dict[str, str | None]:
    """The fields to change (``None``: clear) from a PATCH body (pure; 400 on anything bad)."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise errors.BadRequest(f"unknown field {unknown[0][:64]!r}; known: {', '.join(FIELDS)}")
    if not body:
        raise errors.BadRequest(f"give at least one of {', '.join(FIELDS)}")
    return {k: None if v is None else CHECKS[k](v) for k, v in body.items()}


def view(machine_id: str, stored: dict[str, Any]) -> dict[str, Any]:
    return {"machine_id": machine_id, **{k: stored.get(k) for k in FIELDS}}


async def read(session: AsyncSession, machine_id: str) -> dict[str, Any]:
    """{target_name, target_size, target_network} (None where unset)."""
    value = await meta.get(session, PREFIX + machine_id)
    stored = json.loads(value) if value else {}
    return {k: stored.get(k) for k in FIELDS}


async def update(session: AsyncSession, machine_id: str, changes: dict[str, str | None]) -> dict[str, Any]:
    """Apply checked ``changes`` to the machine's properties (404 for an unknown machine)."""
    agent = await session.get(Component, machine_id)
    if agent is None or agent.role != "agent":
        raise errors.NotFound(f"no machine {machine_id}")
    stored = {**await read(session, machine_id), **changes}
    await meta.put(session, PREFIX + machine_id, json.dumps(stored, sort_keys=True))
    log.info("failover_properties_set", machine_id=machine_id, **changes)
    return view(machine_id, stored)


def target(props: dict[str, Any]) -> dict[str, Any]:
    """What a failover result carries: ``{"name", "size", "network"}`` (None where unset)."""
    return {"name": props.get("target_name"), "size": props.get("target_size"),
            "network": props.get("target_network")}
