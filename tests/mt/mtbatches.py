"""Test helpers: random change batches for one disk and the images they produce."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

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
