"""The cloud site's compute host (emulated): a machine is its disks, a workload and an agent.

A failed-over machine boots here from its committed replicas: each disk the master target wrote
the chosen point into (mt/view.py ``commit``) is handed over to the machine — moved into the cloud
datastore, as the emulated product builds the cloud VM on its replica disks — and an agent process
serves it (``<machine>-cloud``, site ``cloud``). From then on the workload writes through that agent,
and reprotect replicates it back on-premises (cs/targets.py seeds). The on-prem hypervisor is the
lab itself: its machines' disks live in the on-prem datastore (deploy/lab.py ``datastore``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import errors
from common import logging as dlog
from deploy.lab import Lab
from deploy.topology import DiskSpec, Node

log = dlog.get("drlab.compute")

CLOUD_SUFFIX = "-cloud"


def cloud_name(source: Node | str) -> str:
    name = source if isinstance(source, str) else source.name
    return name[: -len(CLOUD_SUFFIX)] if name.endswith(CLOUD_SUFFIX) else name + CLOUD_SUFFIX


def twin_name(source: Node | str, result: Mapping[str, Any] | None = None) -> str:
    """The failed-over twin's name: the machine's failover ``target.name`` in a failover or commit
    job's ``result`` (cs/failover_props.py) when set, else ``<machine>-cloud``."""
    target = (result or {}).get("target") or {}
    return str(target.get("name") or cloud_name(source))


def hand_over(src: Path, dest: Path) -> None:
    """Move a committed replica to where the machine keeps its disk (a copy across file systems)."""
    if src.resolve() == dest.resolve():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copyfile(src, dest)
        src.unlink()


class ComputeHost:
    """Boots failed-over machines in one site of a lab (``cloud`` by default)."""

    def __init__(self, lab: Lab, site: str = "cloud") -> None:
        self.lab = lab
        self.site = site

    def machine(self, name: str) -> Node | None:
        return next((n for n in self.lab.nodes if n.name == name and n.role == "agent"), None)

    async def boot(self, source: Node, replicas: Mapping[str, Path], timeout_s: float = 60.0,
                   name: str | None = None) -> Node:
        """Start ``source``'s failed-over twin (``name``, default ``<source>-cloud``) on the committed
        ``replicas`` (disk name -> path); returns its node once its agent has registered and sits in
        this site on the CS."""
        missing = sorted({d.name for d in source.disks} - set(replicas))
        if missing:
            raise errors.BadRequest(f"no committed replica for disk(s) {', '.join(missing)} of {source.name}")
        node = Node(name or cloud_name(source), "agent", source.address, {},
                    tuple(DiskSpec(d.name, d.size_bytes) for d in source.disks), site=self.site)
        if self.machine(node.name) is None:
            self.lab.add_node(node)
        for disk in node.disks:
            await asyncio.to_thread(hand_over, Path(replicas[disk.name]), self.lab.disk_path(node, disk.name))
        started = time.monotonic()
        self.lab.start_node(node)
        await self.lab.wait_healthy(timeout_s, (node,))
        await self.lab.assign_sites((node,))
        log.info("machine_booted", machine=node.name, source=source.name, site=self.site,
                 seconds=round(time.monotonic() - started, 3))
        return node

    def shut_down(self, node: Node) -> None:
        """A clean shutdown of the machine's agent (SIGTERM: it stops after its last batch)."""
        self.lab.kill_node(node, signal.SIGTERM)
