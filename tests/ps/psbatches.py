"""Helpers shared by the PS tests: make real encoded change batches."""

from __future__ import annotations

from common.wire import batch as wbatch


def make_batch(disk_id: str, gen: int, seq: int, *, offset: int = 0, data: bytes = b"x" * 4096,
               wnum: int | None = None) -> bytes:
    w = seq if wnum is None else wnum
    return wbatch.encode(wbatch.ChangeBatch(
        disk_id=bytes.fromhex(disk_id), generation=gen, seq=seq, wnum_first=w, wnum_hi=w,
        t_first_ns=1_000 * seq, t_last_ns=1_000 * seq + 1, mode=wbatch.Mode.DATA,
        accuracy=wbatch.Accuracy.EXACT, records=[wbatch.Record(offset, data)]))


def corrupt_checksum(buf: bytes) -> bytes:
    return buf[:-1] + bytes([buf[-1] ^ 0xFF])
