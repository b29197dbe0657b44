"""Per-role settings documents and the settings long-poll.

The version of every document is the global settings version: any change a document could
show bumps it (``CSState.change``), so a component whose version is older gets the current
document at once, and otherwise waits until the next change or the end of its wait.
PS and MT documents carry ``revoked_serials`` (decimal strings, see cs/revocation.py; absent
when none is revoked): the servers refuse those certificates.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from cs import (
    bookmarks,
    diskkeys,
    planned,
    policies,
    psconfig,
    push_install,
    release,
    resize,
    revocation,
    switch_jobs,
    verify,
)
from cs.db import meta, repo
from cs.db.models import Component, Disk, Job, Machine, Policy
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
            **({"resync_scope": "hot", "resync_reason": hot_reason} if hot_reason else {}),
            **({"seeded": True} if disk.replica_path else {})}  # the replica holds data: compare, not copy


def ps_disk(disk: Disk, mt: Component | None) -> dict[str, Any]:
    return {"disk_id": disk.disk_id, "machine_id": disk.machine_id, "generation": disk.generation,
            "size_bytes": disk.size_bytes, "mt_url": url_of(mt, "data"), "mt_control_url": url_of(mt, "control"),
            "key_epoch": disk.key_epoch, "key_b64": disk.key_b64}


def mt_disk(disk: Disk, drain_ps_ids: list[str] | None = None, policy: Policy | None = None) -> dict[str, Any]:
    """``drain_ps_ids``: PSs the disk moved away from that still upload what they cached;
    ``policy``: the machine's (else the default) policy, for retention (mt/retention.py)."""
    return {"disk_id": disk.disk_id, "ps_id": disk.ps_id, "generation": disk.generation,
            "size_bytes": disk.size_bytes, "key_epoch": disk.key_epoch, "key_b64": disk.key_b64,
            **({"drain_ps_ids": drain_ps_ids} if drain_ps_ids else {}),
            **({"replica_path": disk.replica_path} if disk.replica_path else {}),
            **({"retention_window_s": policy.retention_window_s, "low_space_action": policy.low_space_action}
               if policy is not None else {})}


async def machine_policies(session: AsyncSession, machine_ids: set[str]) -> dict[str, Policy]:
    """{machine id: its policy, else the default policy} (absent: neither exists)."""
    rows = (await session.execute(select(Machine.machine_id, Policy).join(Policy, Policy.name == Machine.policy_name)
                                  .where(Machine.machine_id.in_(machine_ids)))).all() if machine_ids else []
    found: dict[str, Policy] = {str(m): p for m, p in rows}
    default = await session.get(Policy, policies.DEFAULT)
    return {m: pol for m in machine_ids if (pol := found.get(m, default)) is not None}


def mt_job(job: Job) -> dict[str, Any]:
    """A job's entry in its MT's document; ``image: true`` only when the job asks for an image file."""
    return {"job_id": job.job_id, "kind": job.kind, "disk_id": job.disk_id, "point": job.params.get("point"),
            **({"image": True} if (job.params or {}).get("image") is True else {})}


async def _revoked(session: AsyncSession) -> dict[str, Any]:
    """``{"revoked_serials": [...]}`` when any certificate is revoked (absent means none)."""
    serials = await revocation.revoked_serials(session)
    return {"revoked_serials": serials} if serials else {}


def live(disk: Disk) -> bool:
    """A committed disk (its failover committed, cs/machine_ops.py) is in no document any more:
    its MT stops applying it, its PS and agent stop replicating it."""
    return disk.state != "committed"


async def document(session: AsyncSession, role: str, component_id: str) -> dict[str, Any]:
    if role == "agent":
        disks = [d for d in await repo.disks(session, machine_id=component_id)
                 if d.ps_id is not None and live(d) and not resize.stopped(d)]  # resized: replication stops
        peers = await repo.components_by_id(session, {d.ps_id for d in disks if d.ps_id})
        checks = await verify.agent_requests(session, component_id)  # online verifies to run, if any
        marks = await bookmarks.agent_requests(session, component_id)  # bookmarks to act on, if any
        hot = await switch_jobs.hot_scopes(session, disks)  # ps-switch generations: hot extents only
        stop = await planned.shutdown_entry(session, component_id)  # a planned failover stops the source
        return {"disks": [agent_disk(d, peers.get(d.ps_id or ""), hot.get(d.disk_id)) for d in disks],
                **({"verify": checks} if checks else {}), **({"bookmarks": marks} if marks else {}),
                **({"shutdown": stop} if stop else {})}
    if role == "ps":
        disks = [d for d in await repo.disks(session, ps_id=component_id) if live(d) and not resize.stopped(d)]
        draining = await switch_jobs.draining_disks(session, component_id)  # moved away, still uploading
        peers = await repo.components_by_id(session, {d.mt_id for d in disks + draining if d.mt_id})
        return {"disks": [ps_disk(d, peers.get(d.mt_id or "")) for d in disks]
                + [{**ps_disk(d, peers.get(d.mt_id or "")), "draining": True} for d in draining],
                **await _revoked(session)}
    if role == "mt":
        disks = [d for d in await repo.disks(session, mt_id=component_id) if live(d)]
        jobs = await repo.active_jobs_for_mt(session, component_id)
        drains = await switch_jobs.drain_ps_ids(session, [d.disk_id for d in disks])
        gone = await release.delete_disks(session, component_id)  # released disks whose files go (cs/release.py)
        pols = await machine_policies(session, {d.machine_id for d in disks})
        return {"disks": [mt_disk(d, drains.get(d.disk_id), pols.get(d.machine_id)) for d in disks],
                "jobs": [mt_job(j) for j in jobs],
                **({"delete_disks": gone} if gone else {}), **await _revoked(session)}
    raise errors.Forbidden(f"role {role} has no settings document")


async def long_poll(state: CSState, role: str, component_id: str, version: int, wait_s: float) -> dict[str, Any]:
    """``{version, document}`` at once if the version moved past ``version``, else after the wait."""
    if role not in ("agent", "ps", "mt"):
        raise errors.Forbidden(f"role {role} has no settings document")
    await state.watch.wait_newer(version, min(max(0.0, wait_s), state.cfg.long_poll_max_s))
    async with state.db.read() as session:
        current = await meta.settings_version(session)
        doc = await document(session, role, component_id)
        if role in ("ps", "mt"):  # the disks' keys, sealed at rest (cs/diskkeys.py)
            diskkeys.reveal_in(psconfig.store_key(state.cfg.data_dir), doc)
        if role == "ps":  # hypervisors to discover, push installs to run (cs/push_install.py)
            doc.update(await push_install.ps_settings(session, component_id, state.cfg.discovery_interval_s))
            doc.update(await psconfig.ps_settings(session, state.cfg.data_dir, component_id))  # proxy, bandwidth
    return {"version": current, "document": doc}
