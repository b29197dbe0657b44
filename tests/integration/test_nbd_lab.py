"""Real block clients as the workload: qemu-io and nbdcopy write through the agent's NBD export
in a process lab; after the MT applied everything, failover to "latest" must give, byte for
byte, what the clients wrote (the source image, and a model of the commands built here)."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.wire.nbd import ZERO_CHUNK_BYTES
from deploy.lab import Lab
from deploy.scenario import Scenario
from deploy.topology import load
from tests.integration.conftest import Machine
from tests.integration.conftest import write_topology as lab_topology

MiB = 1 << 20
DISK_MIB = 64
COPY_MIB = 24

TOOLS = ("qemu-io", "nbdcopy")


def write_topology(path: Path, net: int, nbd: str = "") -> Path:
    extra = nbd or f'address = "127.{net}.1.10"\nnbd_port = 10809'
    return lab_topology(path, net, machines=[Machine(disks={"disk0": DISK_MIB}, extra=extra)])


def test_topology_nbd_option_reaches_the_agent_config(tmp_path: Path) -> None:
    lab = Lab(load(write_topology(tmp_path / "lab.toml", 77)), tmp_path / "lab")
    machine = lab.topology.machines[0]
    cfg = lab.config_for(machine)
    assert (cfg["nbd_enabled"], cfg["nbd_listen_host"], cfg["nbd_port"]) == (True, "127.77.1.10", 10809)
    assert lab.nbd_url(machine, "disk0") == "nbd://127.77.1.10:10809/disk0"
    plain = Lab(load(write_topology(tmp_path / "plain.toml", 77, nbd="# no NBD")), tmp_path / "plain")
    assert "nbd_enabled" not in plain.config_for(plain.topology.machines[0])
    with pytest.raises(ConfigError, match="loopback"):
        load(write_topology(tmp_path / "bad.toml", 77, nbd='address = "10.0.0.5"\nnbd_port = 10809'))


def generated_image(path: Path, rng: random.Random) -> bytes:
    """COPY_MIB of random MiB blocks and sparse holes (nbdcopy zeroes those through the export)."""
    blocks = [rng.randbytes(MiB) if rng.random() < 0.6 else bytes(MiB) for _ in range(COPY_MIB)]
    with open(path, "wb") as fh:
        fh.truncate(COPY_MIB * MiB)
        for i, block in enumerate(blocks):
            if any(block[:64]):
                fh.seek(i * MiB)
                fh.write(block)
    return b"".join(blocks)


async def run(*cmd: str, timeout_s: float = 30.0) -> str:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out.decode(errors='replace')}"
    return out.decode(errors="replace")


def nbd_events(log_path: Path) -> list[dict[str, object]]:
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"nbd_' in line:
            events.append(json.loads(line))
    return events


async def nbd_last_wnum(log_path: Path, timeout_s: float = 10.0) -> int:
    """The highest write number the export gave, once every client that opened it has gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = nbd_events(log_path)
        opened = sum(1 for e in events if e["event"] == "nbd_export_opened")
        gone = [e for e in events if e["event"] == "nbd_client_disconnected" and e.get("export")]
        if opened and len(gone) == opened:
            return max(int(str(e["last_wnum"])) for e in gone)
        assert time.monotonic() < deadline, f"NBD clients still connected: {events[-5:]}"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(60)
async def test_qemu_io_and_nbdcopy_through_the_export_fail_over_byte_exact(tmp_path: Path, seed: int) -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"install {missing} (make system-deps: Debian's qemu-utils and libnbd-bin)"
    rng = random.Random(seed)
    lab = Lab(load(write_topology(tmp_path / "lab.toml", random.randrange(30, 250))), tmp_path / "lab")
    machine = lab.topology.machines[0]
    started = time.monotonic()
    try:
        await lab.up()
        async with lab.admin() as admin:
            sc = Scenario(lab, seed)
            await sc.protect(admin, timeout_s=40)
            protected_s = time.monotonic() - started
            url = lab.nbd_url(machine, "disk0")
            model = bytearray(DISK_MIB * MiB)

            # 1. cover the copy's range with a pattern, so that nbdcopy's zeroed holes show
            await run("qemu-io", "-f", "raw", url, "-c", f"write -P 0xee 0 {COPY_MIB}M")
            model[:COPY_MIB * MiB] = b"\xee" * (COPY_MIB * MiB)
            # 2. nbdcopy a generated image over it (data as WRITE, holes as zeroing)
            source = tmp_path / "generated.img"
            image = await asyncio.to_thread(generated_image, source, rng)
            await run("nbdcopy", str(source), url)
            model[:len(image)] = image
            # 3. qemu-io: patterns, FUA, write-zeroes across zero pieces, discard (TRIM), flush, read-back
            zero_off, zero_len = 30 * MiB + 4096, ZERO_CHUNK_BYTES * 2 + 12345
            await run("qemu-io", "-f", "raw", url,
                      "-c", "write -P 0xab 0 1M",
                      "-c", "write -P 0x5a 40M 3M",
                      "-c", f"write -z {zero_off - MiB} {MiB}",
                      "-c", f"write -P 0x33 {zero_off} {zero_len}",
                      "-c", f"write -z {zero_off} {zero_len}",
                      "-c", "discard 41M 64k",
                      "-c", "write -f -P 0xc4 63M 512",
                      "-c", "flush",
                      "-c", "read -P 0xab 0 1M",
                      "-c", "read -P 0 41M 64k")
            model[0:MiB] = b"\xab" * MiB
            model[40 * MiB:43 * MiB] = b"\x5a" * (3 * MiB)
            model[zero_off - MiB:zero_off] = bytes(MiB)
            model[zero_off:zero_off + zero_len] = bytes(zero_len)
            model[41 * MiB:41 * MiB + 64 * 1024] = bytes(64 * 1024)
            model[63 * MiB:63 * MiB + 512] = b"\xc4" * 512
            clients_s = time.monotonic() - started - protected_s

            last = await nbd_last_wnum(lab.log_path(machine))
            assert last > 0
            deadline = time.monotonic() + 30
            while not (pts := await sc.points()) or max(int(p["wnum_hi"]) for p in pts) < last:
                assert time.monotonic() < deadline, f"the MT never applied write {last}"
                await asyncio.sleep(0.1)
            job = await admin.wait_job(await admin.failover(sc.disk_id, "latest", image=True), timeout_s=30)
            assert job["state"] == "succeeded", job
            assert int(job["result"]["point"]["wnum_hi"]) >= last

            src = await asyncio.to_thread(lab.disk_path(machine, "disk0").read_bytes)
            replica = await asyncio.to_thread(Path(job["result"]["image_path"]).read_bytes)
            assert src == bytes(model), f"the source differs from the commands at {_first_diff(src, model)}"
            assert replica == src, f"the failed-over image differs from the source at {_first_diff(replica, src)}"
            print(f"NBD lab: protected after {protected_s:.1f} s, clients {clients_s:.1f} s, "
                  f"{last} NBD writes, total {time.monotonic() - started:.1f} s")
    finally:
        left = lab.down()
        assert not left, f"daemons needed SIGKILL at teardown: {left}"


def _first_diff(a: bytes, b: bytes | bytearray) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
