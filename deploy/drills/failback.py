"""`drlab drill failback`: the whole recovery cycle in the process lab, each step verified.

1. protect the on-prem machine (initial replication to the cloud MT);
2. test failover to latest while the workload runs on (oracle at W), then its cleanup;
3. unplanned failover: the machine is killed mid-workload, then writes are made to its disk that
   never replicate; failover to latest (oracle at W);
4. before commit the failed-over machine runs on its views: it writes over NBD into their overlays
   (the MT serves each view as an NBD export, mt/viewnbd.py);
5. commit writes each view with its overlay into the replica in place; the cloud compute host boots
   the machine's twin on the committed replicas (each equals its failover image plus the view
   writes, by the oracle);
6. the twin keeps writing; reprotect: it replicates back through the cloud PS to the on-prem MT,
   which adopts the original on-prem disk and resyncs it by checksum — only differing blocks
   travel (the step says how many bytes against the disk's size);
7. failback, a planned failover of the twin under load (cs/planned.py): the twin stops taking
   writes, everything drains, its failover on the on-prem MT equals the twin's disk exactly and
   holds every acknowledged write; commit writes it into the original disk in place;
8. protect again: the on-prem machine starts on its disk and replicates to the cloud, seeded by the
   twin's disk (checksum: nothing differs); a test failover there equals its disk exactly.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from common.config import AgentConfig
from deploy.compute import CLOUD_SUFFIX, ComputeHost, twin_name
from deploy.drills import common as dc
from deploy.drills.steps import Steps, require
from deploy.lab import Lab
from deploy.scenario import Scenario
from deploy.topology import Node

# the cloud machine's writes stay in a few MiB (as a machine's working set does), so that the
# reprotect's checksum resync has little to send and the drill can show it
LOCAL = ("--hot-region-mib", "2", "--overwrite-share", "0.97")


async def run(params: dc.DrillParams, say: Any = print) -> int:
    return await dc.run_drill("failback", params, cycle, 9, say)


async def cycle(lab: Lab, admin: Any, sc: Scenario, params: dc.DrillParams, steps: Steps) -> None:
    disk = sc.disk.name
    await dc.protect_step(admin, sc, steps)
    await dc.test_failover_step(admin, sc, params, steps, "test failover + cleanup")
    failover = await unplanned(lab, admin, sc, params, steps)
    view_logs = await run_on_views(lab, sc, failover, params, steps)
    compute = ComputeHost(lab)
    async with steps.step("commit + boot in the cloud") as st:
        job = await dc.run_op(admin, sc.machine_id, "commit")
        twin = await compute.boot(sc.machine, await dc.committed_replicas(admin, job),
                                  name=twin_name(sc.machine, job["result"]))  # its failover target name, if set
        for d in failover["result"]["disks"]:
            log, last = view_logs[d["name"]]
            await dc.verify_over(Path(d["image_path"]), log, sc.machine.disks[sc.disk_index(d["name"])].size_bytes,
                                 last, lab.disk_path(twin, d["name"]), f"{twin.name} disk {d['name']}")
        st.verified = (f"{twin.name} booted on the committed replicas: each equals its failover image plus "
                       "the writes made to its view (the oracle)")
    cloud = Scenario(lab, params.seed + 1, twin)
    await cloud_writes(cloud, params, steps)
    # where the machine comes back: its own disks, or an alternate machine's new, empty ones
    home = Node(sc.machine.name + "-alt", "agent", sc.machine.address, {}, sc.machine.disks, site="onprem") \
        if params.alternate else sc.machine
    if params.alternate:
        for d in home.disks:
            await asyncio.to_thread(provision, lab.disk_path(home, d.name), d.size_bytes)
    await reprotect(lab, admin, home, cloud, steps)
    async with steps.step("failback (planned)") as st:
        proc = cloud.start_workload(params.rate_mb_s, params.duration_s * 4, None, *LOCAL)
        await asyncio.sleep(params.duration_s / 2)
        job = await dc.run_op(admin, cloud.machine_id, "planned-failover", {"image": True})  # under load
        proc.communicate()  # its writes are refused once the source stopped: it ends with an error
        acked, final = cloud.last_wnum(), int(job["result"]["source_wnum"])
        require(final >= acked, f"the source stopped at W {final} but acknowledged writes up to {acked}")
        for name, image in dc.images(job).items():
            await dc.same_bytes(lab.disk_path(twin, name), image, "failback image")
        await dc.run_op(admin, cloud.machine_id, "commit")
        compute.shut_down(twin)
        for d in home.disks:
            await dc.same_bytes(lab.disk_path(twin, d.name), lab.disk_path(home, d.name), "on-prem disk")
        st.verified = (f"{twin.name} stopped under load at W {final} and drained: the failback image and the "
                       f"disk of {home.name} equal its disk exactly ({acked} acknowledged cloud writes, none lost)")
    async with steps.step("protect again") as st:
        if params.alternate:
            await ComputeHost(lab, "onprem").boot(twin, {d.name: lab.disk_path(home, d.name) for d in home.disks},
                                                  name=home.name)
            sc = Scenario(lab, params.seed + 2, home)
        else:
            lab.start_node(sc.machine)
            await lab.wait_healthy(60.0, (sc.machine,))
        seconds = await sc.protect(admin, seed={d.name: str(lab.disk_path(twin, d.name)) for d in sc.machine.disks})
        resync = await dc.last_resync(admin, sc.disk_ids[disk])
        require(int(resync.get("bytes_sent") or 0) == 0, f"protect again sent {resync.get('bytes_sent')} bytes")
        job = await dc.run_op(admin, sc.machine_id, "test-failover", {"point": "latest-processed", "image": True})
        for name, image in dc.images(job).items():
            await dc.same_bytes(lab.disk_path(sc.machine, name), image, "protected-again image")
        await dc.run_op(admin, sc.machine_id, "cleanup-test-failover")
        st.verified = (f"{sc.machine.name} replicates to the cloud again in {seconds:.1f} s, 0 bytes sent "
                       f"(checksum against {twin.name}'s disk); its test failover equals its disk")


async def unplanned(lab: Lab, admin: Any, sc: Scenario, params: dc.DrillParams, steps: Steps) -> dict[str, Any]:
    async with steps.step("unplanned failover") as st:
        proc = sc.start_workload(params.rate_mb_s, params.duration_s * 4)
        await asyncio.sleep(params.duration_s / 2)
        lab.kill_node(sc.machine)  # the disaster: the machine dies mid-workload
        proc.kill()
        proc.communicate()
        extra = sum(dc.scribble(lab.disk_path(sc.machine, d.name), 4, params.seed + i)
                    for i, d in enumerate(sc.machine.disks))
        job = await dc.oracle_failover(admin, sc, "failover", "latest", "unplanned failover")
        result = job["result"]
        st.verified = (f"{sc.machine.name} killed; image at W {result['wnum']} byte-exact "
                       f"({sc.last_wnum() - int(result['wnum'])} acknowledged writes after it, and "
                       f"{dc.mib(extra)} written on-premises afterwards, never replicated)")
        return job


async def run_on_views(lab: Lab, sc: Scenario, failover: dict[str, Any], params: dc.DrillParams,
                       steps: Steps) -> dict[str, tuple[Path, int]]:
    """Before commit the failed-over machine runs on its views: it writes over NBD into their
    overlays. Per disk: the write log and its last write number."""
    async with steps.step("the machine runs on its failover views") as st:
        logs: dict[str, tuple[Path, int]] = {}
        writes = 0
        for i, d in enumerate(failover["result"]["disks"]):
            require("nbd_url" in d, f"disk {d['name']}: the MT serves no NBD export of its view")
            log = lab.root / f"{sc.machine.name}-view-{d['name']}.log"
            stats = await asyncio.to_thread(dc.nbd_workload, d["nbd_url"], log, params.seed + 10 + i,
                                            params.duration_s / 2, params.rate_mb_s)
            logs[d["name"]] = (log, int(stats["last_wnum"]))
            writes += int(stats["writes"])
        st.verified = f"{writes} writes over NBD into the views' overlays ({', '.join(sorted(logs))})"
        return logs


async def cloud_writes(cloud: Scenario, params: dc.DrillParams, steps: Steps) -> None:
    async with steps.step("cloud machine writes") as st:
        stats = cloud.finish_workload(cloud.start_workload(params.rate_mb_s, params.duration_s, None, *LOCAL),
                                      params.duration_s + 60)
        st.verified = f"{cloud.machine.name} wrote {stats.get('writes')} writes ({dc.mib(int(stats.get('bytes', 0)))})"


async def reprotect(lab: Lab, admin: Any, home: Node, cloud: Scenario, steps: Steps) -> None:
    """The twin protected back on-premises, seeded with ``home``'s disks (checksum resync)."""
    async with steps.step("reprotect") as st:
        block = AgentConfig().hash_block_bytes
        pairs = [(lab.disk_path(home, d.name), lab.disk_path(cloud.machine, d.name)) for d in home.disks]
        differing = sum([await asyncio.to_thread(differing_blocks, a, b, block) for a, b in pairs])
        started = time.monotonic()
        await cloud.protect(admin, seed={d.name: str(lab.disk_path(home, d.name)) for d in home.disks})
        sent = compared = 0
        for disk_id in cloud.disk_ids.values():
            resync = await dc.last_resync(admin, disk_id)
            require(resync.get("mode") == "checksum", f"reprotect resynced by {resync.get('mode')}, not checksum")
            sent += int(resync.get("bytes_sent") or 0)
            compared += int(resync.get("bytes_compared") or 0)
        size = sum(d.size_bytes for d in cloud.machine.disks)
        require(sent == differing * block, f"reprotect sent {sent} bytes, the disks differ in {differing} blocks")
        where = "the original disk" if home.name + CLOUD_SUFFIX == cloud.machine.name else f"{home.name}'s new disk"
        st.verified = (f"{cloud.machine.name} -> on-prem MT over {where} in "
                       f"{time.monotonic() - started:.1f} s: sent {dc.mib(sent)} of {dc.mib(size)} "
                       f"({100 * sent / size:.1f} %) = exactly the {differing} differing blocks; "
                       f"compared {dc.mib(compared)}")


def provision(path: Path, size_bytes: int) -> None:
    """A new, empty (sparse) disk for the alternate machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size_bytes)


def differing_blocks(a: Path, b: Path, block: int) -> int:
    """How many ``block``-sized blocks of two equally sized disks differ."""
    count = 0
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        while True:
            x, y = fa.read(block), fb.read(block)
            if not x and not y:
                return count
            count += x != y


def main(params: dc.DrillParams) -> int:
    return asyncio.run(run(params))
