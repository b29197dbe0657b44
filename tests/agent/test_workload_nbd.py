"""The workload's ``--nbd`` mode (agent/workload.py + common/nbdclient.py): seeded writes to an NBD
export, each acknowledged one logged, so the oracle rebuilds the export's bytes from the log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.workload import WorkloadParams, main, run_workload
from common import oracle
from common.nbdserver import NbdServer
from common.wire import writelog

SIZE = 4 << 20
pytestmark = pytest.mark.timeout(30)


class MemExport:
    """One in-memory export, the only one served (common.nbdserver Export and Exports at once)."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size_bytes, self.data = name, size, bytearray(size)
        self.write_lock = asyncio.Lock()

    def names(self) -> list[str]:
        return [self.name]

    def get(self, name: str) -> MemExport | None:
        return self if name == self.name else None

    async def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + length])

    async def write(self, offset: int, data: bytes) -> None:
        self.data[offset:offset + len(data)] = data

    async def flush(self) -> None:
        pass


async def test_nbd_workload_logs_what_the_export_got(tmp_path: Path, seed: int) -> None:
    export = MemExport("v", SIZE)
    server = NbdServer(export, port=0)
    await server.start()
    try:
        params = WorkloadParams(Path(), tmp_path / "w.log", seed=seed, rate_mb_s=0, duration_s=10, max_writes=40,
                                disks=[3], nbd_url=f"nbd://127.0.0.1:{server.port}/v")
        stats = await run_workload(params)
    finally:
        await server.stop()
    assert (stats.writes, stats.first_wnum, stats.last_wnum, stats.error) == (40, 1, 40, None)
    (tmp_path / "v.img").write_bytes(bytes(export.data))
    res = await asyncio.to_thread(oracle.verify, tmp_path / "w.log", 3, SIZE, 40, tmp_path / "v.img")
    assert res.ok and res.writes_applied == 40, res.detail


def test_nbd_and_socket_are_exclusive_and_one_is_needed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["run", "--log", str(tmp_path / "l")],
                 ["run", "--socket", "s", "--nbd", "nbd://127.0.0.1/x", "--log", str(tmp_path / "l")]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert main(["run", "--nbd", "http://nope", "--log", str(tmp_path / "l"), "--duration-s", "1"]) == 2
    assert "nbd://" in capsys.readouterr().err
    assert writelog.read_records(tmp_path / "l") == []  # a header, no write
