"""Online verify: the admin asks, the agent compares its disk with the replica (block hashes
from the MT, through the PS) without stopping replication, and posts what differs.

Life of a verify: ``queued`` (it shows in the agent's settings document, ``verify`` list) ->
``running`` (the agent started) -> ``succeeded`` with the result, or ``failed`` with an error.
One verify at a time per disk. Posting the same final state again is a no-op (the agent retries
on lost replies); another state for a finished verify is 409. With ``repair``, a result that
lists differing blocks starts a resync (a new generation, reason ``verify``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs import validate
from cs.db.models import Disk, Verify
from cs.disks import bump_for_resync, own_disk
from cs.state import CSState

log = dlog.get("drlab.cs.verify")

ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed")
DEFAULT_BLOCK = 1 << 20
MIN_BLOCK, MAX_BLOCK = 4096, 64 << 20
MAX_OFFSETS = 100_000
MAX_RESULT_BYTES = 4 << 20
MAX_ERROR_CHARS = 4000


@dataclass(frozen=True)
class Params:
    block_bytes: int = DEFAULT_BLOCK
    repair: bool = False


def parse_request(body: dict[str, Any]) -> Params:
    unknown = set(body) - {"block_bytes", "repair"}
    if unknown:
        raise errors.BadRequest(f"unknown fields: {', '.join(sorted(str(k)[:32] for k in unknown))}")
    block = validate.integer(body, "block_bytes", low=MIN_BLOCK, high=MAX_BLOCK) if "block_bytes" in body \
        else DEFAULT_BLOCK
    if block & (block - 1):
        raise errors.BadRequest("block_bytes must be a power of two")
    repair = body.get("repair", False)
    if not isinstance(repair, bool):
        raise errors.BadRequest("repair must be true or false")
    return Params(block, repair)


def view(v: Verify) -> dict[str, Any]:
    return {"verify_id": v.verify_id, "disk_id": v.disk_id, "state": v.state, "block_bytes": v.block_bytes,
            "repair": v.repair, "generation": v.generation, "created_ns": v.created_ns, "updated_ns": v.updated_ns,
            "result": v.result, "error": v.error}


async def request(state: CSState, disk_id: str, params: Params) -> dict[str, Any]:
    now = time.time_ns()
    async with state.change() as session:
        disk = await session.get(Disk, disk_id)
        if disk is None:
            raise errors.NotFound(f"no disk {disk_id}")
        if disk.ps_id is None:
            raise errors.Conflict(f"disk {disk_id} is not protected")
        busy = (await session.scalars(select(Verify).where(Verify.disk_id == disk_id,
                                                           Verify.state.in_(ACTIVE)))).first()
        if busy is not None:
            raise errors.Conflict(f"disk {disk_id} already has verify {busy.verify_id} {busy.state}")
        v = Verify(verify_id=uuid.uuid4().hex, disk_id=disk_id, state="queued", block_bytes=params.block_bytes,
                   repair=params.repair, created_ns=now, updated_ns=now, generation=0, result=None, error=None)
        session.add(v)
    log.info("verify_queued", verify_id=v.verify_id, disk_id=disk_id, block_bytes=params.block_bytes,
             repair=params.repair)
    return view(v)


async def get(state: CSState, disk_id: str, verify_id: str | None) -> dict[str, Any]:
    """One verify of the disk, or its latest (404 if none)."""
    async with state.db.read() as session:
        if await session.get(Disk, disk_id) is None:
            raise errors.NotFound(f"no disk {disk_id}")
        if verify_id is not None:
            v = await session.get(Verify, verify_id)
            if v is None or v.disk_id != disk_id:
                raise errors.NotFound(f"no verify {verify_id} of disk {disk_id}")
        else:
            stmt = select(Verify).where(Verify.disk_id == disk_id).order_by(Verify.created_ns.desc()).limit(1)
            v = (await session.scalars(stmt)).first()
            if v is None:
                raise errors.NotFound(f"disk {disk_id} was never verified")
        return view(v)


async def agent_requests(session: AsyncSession, machine_id: str) -> list[dict[str, Any]]:
    """The verifies the machine's agent has to run (its settings document's ``verify`` list)."""
    stmt = (select(Verify).join(Disk, Disk.disk_id == Verify.disk_id)
            .where(Disk.machine_id == machine_id, Verify.state.in_(ACTIVE)).order_by(Verify.created_ns))
    return [{"verify_id": v.verify_id, "disk_id": v.disk_id, "block_bytes": v.block_bytes}
            for v in (await session.scalars(stmt)).all()]


@dataclass(frozen=True)
class Outcome:
    state: str
    generation: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None


def _offsets(body: dict[str, Any], field: str) -> list[int]:
    value = body.get(field, [])
    if not isinstance(value, list) or len(value) > MAX_OFFSETS:
        raise errors.BadRequest(f"{field} must be a list of at most {MAX_OFFSETS} offsets")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise errors.BadRequest(f"{field} must hold non-negative integer offsets")
        out.append(item)
    return sorted(set(out))


def parse_result(body: dict[str, Any]) -> Outcome:
    state = validate.choice(body, "state", ("running", *FINAL))
    generation = validate.integer(body, "generation", low=1) if "generation" in body else 0
    if state == "running":
        return Outcome(state, generation)
    if state == "failed":
        error = body.get("error")
        if not isinstance(error, str) or not error:
            raise errors.BadRequest("a failed verify needs an error string")
        return Outcome(state, generation, None, error[:MAX_ERROR_CHARS])
    result = {"block_bytes": validate.integer(body, "block_bytes", low=MIN_BLOCK, high=MAX_BLOCK),
              "blocks_compared": validate.integer(body, "blocks_compared"),
              "bytes_compared": validate.integer(body, "bytes_compared"),
              "differing": _offsets(body, "differing"), "unsettled": _offsets(body, "unsettled"),
              "rounds": validate.integer(body, "rounds", high=1000),
              "seconds": validate.number(body, "seconds", low=0.0, high=1e9)}
    return Outcome(state, validate.integer(body, "generation", low=1), result)


async def post_result(state: CSState, machine_id: str, disk_id: str, verify_id: str, body: dict[str, Any]) -> None:
    outcome = parse_result(body)
    async with state.change() as session:
        disk = await own_disk(session, disk_id, machine_id)
        v = await session.get(Verify, verify_id)
        if v is None or v.disk_id != disk_id:
            raise errors.NotFound(f"no verify {verify_id} of disk {disk_id}")
        if v.state in FINAL:
            if v.state != outcome.state:
                raise errors.Conflict(f"verify {verify_id} already {v.state}")
            return
        result = outcome.result
        if result is not None and any(o >= disk.size_bytes for o in result["differing"] + result["unsettled"]):
            raise errors.BadRequest("an offset lies outside the disk")
        v.state, v.updated_ns = outcome.state, time.time_ns()
        v.generation = outcome.generation or v.generation
        if outcome.state == "running":
            return
        v.error = outcome.error
        if result is not None and result["differing"] and v.repair:
            result = {**result, "repair_generation": await bump_for_resync(session, disk, "verify")}
        v.result = result
    log.info("verify_finished", verify_id=verify_id, disk_id=disk_id, state=outcome.state, error=outcome.error,
             differing=len(result["differing"]) if result else None,
             repair_generation=result.get("repair_generation") if result else None)
