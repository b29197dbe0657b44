"""Where a machine's disks replicate to: the PS and MT of a protect call, and seeds.

A protect call may name the process server and the master target (``ps_id``, ``mt_id``), as the
emulated product's enable-replication and reprotect screens do; without them the CS picks, per
role, the least loaded component — among those in the machine's site for the PS and outside it for
the MT when the machine has a site (cs/sites.py), so that a cloud machine (after a failover)
replicates back on-premises through a cloud PS, and an on-prem machine to the cloud.

A **seed** (``{"seed": {disk name: path}}``) names an existing disk the MT adopts as the replica
instead of an empty one: the original on-prem disk at reprotect, the cloud machine's disk when
protecting forward again after failback. The first generation then compares block hashes
(checksum resync) instead of copying, so only differing blocks travel. The path must lie inside
the MT's datastore (``datastore_dir`` of its config, reported in its heartbeat); anything else is
refused before anything changes.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from common import errors
from cs import model, validate
from cs.db.models import Component, Machine

MAX_PATH = 4096


@dataclass(frozen=True)
class ProtectRequest:
    policy: str | None = None
    ps_id: str | None = None
    mt_id: str | None = None
    seed: dict[str, str] = field(default_factory=dict)  # disk name -> path in the MT's datastore


def parse(body: dict[str, Any]) -> ProtectRequest:
    """The body of a protect call (pure): every field optional."""
    model.body_keys(body, allowed=("policy", "ps_id", "mt_id", "seed"), required=())
    policy = model.name(body["policy"], "policy") if "policy" in body else None
    ps_id = validate.hex_id(body["ps_id"], "ps_id") if "ps_id" in body else None
    mt_id = validate.hex_id(body["mt_id"], "mt_id") if "mt_id" in body else None
    seed = body.get("seed", {})
    if not isinstance(seed, dict) or len(seed) > 64:
        raise errors.BadRequest("seed must be an object {disk name: path} of at most 64 disks")
    out = {}
    for name, path in seed.items():
        if not isinstance(name, str) or not validate.NAME.match(name):
            raise errors.BadRequest(f"seed: {str(name)[:64]!r} is not a disk name")
        out[name] = clean_path(path)
    return ProtectRequest(policy, ps_id, mt_id, out)


def clean_path(path: Any) -> str:
    """An absolute, normalised path without NUL, ``..`` or control characters (pure)."""
    if not isinstance(path, str) or not 1 < len(path) <= MAX_PATH or not path.startswith("/"):
        raise errors.BadRequest("a seed path must be an absolute path")
    if any(ord(c) < 32 for c in path) or ".." in path.split("/"):
        raise errors.BadRequest("a seed path must not hold control characters or '..'")
    return posixpath.normpath(path)


def inside(path: str, root: str) -> bool:
    root = posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_seed(seed: dict[str, str], disk_names: Sequence[str], mt: Component) -> None:
    """Every seeded disk is the machine's and its path is in the MT's datastore (409 otherwise)."""
    unknown = sorted(set(seed) - set(disk_names))
    if unknown:
        raise errors.NotFound(f"the machine has no disk {unknown[0]}")
    if not seed:
        return
    root = (mt.metrics or {}).get("datastore_dir")
    if not isinstance(root, str) or not root:
        raise errors.Conflict(f"master target {mt.host_id} has no datastore: it cannot adopt an existing disk")
    outside = sorted(n for n, p in seed.items() if not inside(p, root))
    if outside:
        raise errors.Conflict(f"seed of disk {outside[0]} is outside the datastore {root} of {mt.host_id}")


def pick(candidates: Sequence[Component], load: dict[str, int], what: str, *, site: str | None,
         same_site: bool) -> Component:
    """The least loaded candidate, preferring the machine's site (PS) or another site (MT) (pure)."""
    if site is not None:
        preferred = [c for c in candidates if (c.site_name == site) == same_site and c.site_name is not None]
        candidates = preferred or list(candidates)
    if not candidates:
        raise errors.Conflict(f"no {what} is registered")
    return min(candidates, key=lambda c: (load.get(c.component_id, 0), c.registered_at, c.component_id))


def named(comp: Component | None, component_id: str, role: str) -> Component:
    if comp is None or comp.role != role:
        raise errors.NotFound(f"no {role} {component_id}")
    return comp


def machine_site(agent: Component, row: Machine | None) -> str | None:
    return (row.site_name if row is not None else None) or agent.site_name
