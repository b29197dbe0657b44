"""Per-role settings documents and the settings long-poll.

The version of every document is the global settings version: any change a document could
show bumps it (``CSState.change``), so a component whose version is older gets the current
document at once, and otherwise waits until the next change or the end of its wait.
PS and MT documents carry ``revoked_serials`` (decimal strings, see cs/revocation.py; absent
when none is revoked): the servers refuse those certificates.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from cs import bookmarks, revocation, switch_jobs, verify
from cs.db import meta, repo
from cs.db.models import Component, Disk, Job
from cs.state import CSState


def url_of(comp: Component | None, port_name: str) -> str | None:
    """``https://HOST:PORT`` from what the component sent at registration (None if unknown)."""
    if comp is None or port_name not in (comp.ports or {}):
        return None
    host = f"[{comp.address}]" if ":" in comp.address else comp.address
    return f"https://{host}:{int(comp.ports[port_name])}"


def agent_disk(disk: Disk, ps: Component | None, hot_reason: str | None = None) -> dict[str, Any]:
    """``resync_scope: hot`` when this generation's resync covers the agent's hot extents only (a
    PS switch with the old PS dead, cs/switch_jobs.py), with the reason."""
    return {"disk_id": disk.disk_id, "name": disk.name, "size_bytes": disk.size_bytes,
            "generation": disk.generation, "ps_url": url_of(ps, "data"),
            **({"resync_scope": "hot", "resync_reason": hot_reason} if hot_reason else {})}


def ps_disk(disk: Disk, mt: Component | None) -> dict[str, Any]:
    return {"disk_id": disk.disk_id, "machine_id": disk.machine_id, "generation": disk.generation,
            "size_bytes": disk.size_bytes, "mt_url": url_of(mt, "data"), "mt_control_url": url_of(mt, "control"),
            "key_epoch": disk.key_epoch, "key_b64": disk.key_b64}


def mt_disk(disk: Disk, drain_ps_ids: list[str] | None = None) -> dict[str, Any]:
    """``drain_ps_ids``: PSs the disk moved away from that still upload what they cached."""
    return {"disk_id": disk.disk_id, "ps_id": disk.ps_id, "generation": disk.generation,
            "size_bytes": disk.size_bytes, "key_epoch": disk.key_epoch, "key_b64": disk.key_b64,
            **({"drain_ps_ids": drain_ps_ids} if drain_ps_ids else {})}


def mt_job(job: Job) -> dict[str, Any]:
    return {"job_id": job.job_id, "kind": job.kind, "disk_id": job.disk_id, "point": job.params.get("point")}


async def _revoked(session: AsyncSession) -> dict[str, Any]:
    """``{"revoked_serials": [...]}`` when any certificate is revoked (absent means none)."""
    serials = await revocation.revoked_serials(session)
    return {"revoked_serials": serials} if serials else {}


async def document(session: AsyncSession, role: str, component_id: str) -> dict[str, Any]:
    if role == "agent":
        disks = [d for d in await repo.disks(session, machine_id=component_id) if d.ps_id is not None]
        peers = await repo.components_by_id(session, {d.ps_id for d in disks if d.ps_id})
        checks = await verify.agent_requests(session, component_id)  # online verifies to run, if any
        marks = await bookmarks.agent_requests(session, component_id)  # bookmarks to act on, if any
        hot = await switch_jobs.hot_scopes(session, disks)  # ps-switch generations: hot extents only
        return {"disks": [agent_disk(d, peers.get(d.ps_id or ""), hot.get(d.disk_id)) for d in disks],
                **({"verify": checks} if checks else {}), **({"bookmarks": marks} if marks else {})}
    if role == "ps":
        disks = list(await repo.disks(session, ps_id=component_id))
        draining = await switch_jobs.draining_disks(session, component_id)  # moved away, still uploading
        peers = await repo.components_by_id(session, {d.mt_id for d in disks + draining if d.mt_id})
        return {"disks": [ps_disk(d, peers.get(d.mt_id or "")) for d in disks]
                + [{**ps_disk(d, peers.get(d.mt_id or "")), "draining": True} for d in draining],
                **await _revoked(session)}
    if role == "mt":
        disks = list(await repo.disks(session, mt_id=component_id))
        jobs = await repo.active_jobs_for_mt(session, component_id)
        drains = await switch_jobs.drain_ps_ids(session, [d.disk_id for d in disks])
        return {"disks": [mt_disk(d, drains.get(d.disk_id)) for d in disks], "jobs": [mt_job(j) for j in jobs],
                **await _revoked(session)}
    raise errors.Forbidden(f"role {role} has no settings document")


async def long_poll(state: CSState, role: str, component_id: str, version: int, wait_s: float) -> dict[str, Any]:
    """``{version, document}`` at once if the version moved past ``version``, else after the wait."""
    if role not in ("agent", "ps", "mt"):
        raise errors.Forbidden(f"role {role} has no settings document")
    await state.watch.wait_newer(version, min(max(0.0, wait_s), state.cfg.long_poll_max_s))
    async with state.db.read() as session:
        current = await meta.settings_version(session)
        doc = await document(session, role, component_id)
    return {"version": current, "document": doc}
