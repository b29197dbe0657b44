"""Test helpers: random change batches for one disk and the images they produce."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.wire import batch as wbatch

DISK_SIZE = 1 << 20


@dataclass
class BatchMaker:
    disk_id: bytes
    size: int = DISK_SIZE
    seed: int = 1
    gen: int = 1
    seq: int = 0
    wnum: int = 0
    t_ns: int = 1_000_000_000
    image: bytearray = field(default_factory=bytearray)
    images: dict[tuple[int, int], bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.image = bytearray(self.size)

    def make(self, nrecords: int = 4, flags: int = 0, mode: wbatch.Mode = wbatch.Mode.DATA,
             accuracy: wbatch.Accuracy = wbatch.Accuracy.EXACT, gen: int | None = None) -> bytes:
        """Encode the next batch (overlapping records included) and update the expected image."""
        if gen is not None and gen != self.gen:
            self.gen, self.seq = gen, 0
        self.seq += 1
        records: list[wbatch.Record] = []
        first = self.wnum + 1
        t_first = self.t_ns + 1
        for _ in range(nrecords):
            length = self.rng.choice([1, 512, 4096, 10_000])
            offset = self.rng.randrange(0, self.size - length)
            if records and self.rng.random() < 0.3:  # overlap the previous record
                offset = max(0, min(self.size - length, records[-1].offset + 7))
            data = self.rng.randbytes(length)
            records.append(wbatch.Record(offset, data))
            self.image[offset:offset + length] = data
            self.wnum += 1
            self.t_ns += 1000
        batch = wbatch.ChangeBatch(self.disk_id, self.gen, self.seq, first if nrecords else 0, self.wnum,
                                   t_first if nrecords else self.t_ns, self.t_ns, mode, accuracy, flags, [],
                                   records)
        self.images[(self.gen, self.seq)] = bytes(self.image)
        self.t_ns += 1_000_000
        return wbatch.encode(batch)


APPLY_CHILD = """
import sys
from pathlib import Path
from mt.apply import DiskStore
from mt.catalog import Catalog
data_dir = Path(sys.argv[1])
store = DiskStore(sys.argv[2], data_dir, Catalog(data_dir / "catalog.db"), int(sys.argv[3]), 1 << 30)
store.open()
while store.apply_next() is not None:
    pass
sys.exit(3)
"""


def run_apply_child(data_dir: Path, disk_id: str, env: dict[str, str], size: int = DISK_SIZE) -> int:
    """Open the disk's store in a child process and apply every staged batch; returns its exit code
    (3: all applied; 137: a crash point set in ``env``, common/crashpoints.py, killed it). Crash
    point variables of this process are not passed on."""
    clean = {k: v for k, v in os.environ.items() if "CRASH_AT" not in k}
    full = {**clean, **env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-c", APPLY_CHILD, str(data_dir), disk_id, str(size)], env=full,
                          capture_output=True, timeout=50, check=False).returncode
