"""A tiny transactional key-value store on a raw disk, written through the agent's block socket: the
application whose own consistency check every app-consistent bookmark must pass.

    python -m agent.txstore run --socket PATH --control PATH [--accounts 64] [--duration-s 10]
        [--start-wnum 1] [--format]
    python -m agent.txstore hook --control PATH freeze|thaw     (the agent's pre-freeze / post-thaw hooks)
    python -m agent.txstore check IMAGE [--recover]

Layout (4 KiB blocks from offset 0 of the disk, little-endian):

    block 0        superblock: magic b"DRTX", version u16, reserved u16, accounts u32, log blocks u32,
                   total i64 (what every balance adds up to), crc32 of the bytes before it
    blocks 1..L    redo log, circular: transaction t's record in block 1 + (t - 1) % L: magic b"TXLR",
                   txid u64, n u16, reserved u16, n x (key u32, value i64), crc32
    then           one page per account: magic b"TXPG", key u32, txid u64 (the last transaction that
                   wrote it, 0 = formatted), balance i64, crc32

Rules: a transaction moves an amount between two accounts; its log record is written first (the
commit point), then its two pages (write-ahead logging, one transaction at a time, so a log slot
is reused only after the transaction it held was applied). Formatting writes every page, then the
superblock. :func:`check` lists violations of the store's invariants on an image as it is — no
recovery: a quiesced store (no transaction in flight: every app-consistent point) has none; a
crash-consistent image may be cut between a transaction's writes, and :func:`recover` (redo of the
committed records) makes it pass. Quiesce (``freeze``) waits for the transaction in progress and
holds the next one until ``thaw`` (or ``max_hold_s``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import struct
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.blockclient import BlockClient

BLOCK = 4096
SUPER = struct.Struct("<4sHHIIq")
LOG_HEAD = struct.Struct("<4sQHH")
ENTRY = struct.Struct("<Iq")
PAGE = struct.Struct("<4sIQq")
CRC = struct.Struct("<I")
assert SUPER.size == 24 and LOG_HEAD.size == 16 and ENTRY.size == 12 and PAGE.size == 24
SUPER_MAGIC, LOG_MAGIC, PAGE_MAGIC = b"DRTX", b"TXLR", b"TXPG"
VERSION = 1
MAX_ENTRIES = (BLOCK - LOG_HEAD.size - CRC.size) // ENTRY.size
MAX_ACCOUNTS = 1 << 16
DEFAULT_BALANCE = 1000


def _seal(body: bytes) -> bytes:
    block = body + CRC.pack(zlib.crc32(body))
    return block + bytes(BLOCK - len(block))


def _opened(block: bytes, size: int) -> bytes | None:
    """The body of a sealed block (``size`` bytes), or None if its crc fails."""
    body = block[:size]
    (crc,) = CRC.unpack_from(block, size)
    return body if crc == zlib.crc32(body) else None


@dataclass(frozen=True)
class Layout:
    accounts: int
    log_blocks: int
    total: int

    def log_offset(self, txid: int) -> int:
        return (1 + (txid - 1) % self.log_blocks) * BLOCK

    def page_offset(self, key: int) -> int:
        return (1 + self.log_blocks + key) * BLOCK

    @property
    def size_bytes(self) -> int:
        return (1 + self.log_blocks + self.accounts) * BLOCK


def encode_super(layout: Layout) -> bytes:
    return _seal(SUPER.pack(SUPER_MAGIC, VERSION, 0, layout.accounts, layout.log_blocks, layout.total))


def encode_record(txid: int, entries: list[tuple[int, int]]) -> bytes:
    assert 1 <= len(entries) <= MAX_ENTRIES
    body = LOG_HEAD.pack(LOG_MAGIC, txid, len(entries), 0) + b"".join(ENTRY.pack(k, v) for k, v in entries)
    return _seal(body)


def encode_page(key: int, txid: int, balance: int) -> bytes:
    return _seal(PAGE.pack(PAGE_MAGIC, key, txid, balance))


def decode_super(image: bytes) -> Layout | None:
    if len(image) < BLOCK:
        return None
    body = _opened(image[:BLOCK], SUPER.size)
    if body is None:
        return None
    magic, version, reserved, accounts, log_blocks, total = SUPER.unpack(body)
    if magic != SUPER_MAGIC or version != VERSION or reserved or not 1 <= accounts <= MAX_ACCOUNTS or log_blocks < 1:
        return None
    return Layout(accounts, log_blocks, total)


def decode_record(block: bytes) -> tuple[int, list[tuple[int, int]]] | None:
    magic, txid, n, _ = LOG_HEAD.unpack_from(block, 0)
    if magic != LOG_MAGIC or not 1 <= n <= MAX_ENTRIES:
        return None
    size = LOG_HEAD.size + n * ENTRY.size
    if _opened(block, size) is None:
        return None
    return txid, [ENTRY.unpack_from(block, LOG_HEAD.size + i * ENTRY.size) for i in range(n)]


def decode_page(block: bytes, key: int) -> tuple[int, int] | None:
    """(txid, balance) of a valid page for ``key``."""
    body = _opened(block, PAGE.size)
    if body is None:
        return None
    magic, k, txid, balance = PAGE.unpack(body)
    return (txid, balance) if magic == PAGE_MAGIC and k == key else None


def _block(image: bytes, offset: int) -> bytes:
    block = image[offset:offset + BLOCK]
    return block + bytes(BLOCK - len(block))


def _read(image: bytes) -> tuple[Layout, dict[int, tuple[int, int] | None], dict[int, list[tuple[int, int]]]] | None:
    layout = decode_super(image)
    if layout is None:
        return None
    pages = {k: decode_page(_block(image, layout.page_offset(k)), k) for k in range(layout.accounts)}
    records: dict[int, list[tuple[int, int]]] = {}
    for slot in range(layout.log_blocks):
        rec = decode_record(_block(image, (1 + slot) * BLOCK))
        if rec is not None and layout.log_offset(rec[0]) == (1 + slot) * BLOCK:
            records[rec[0]] = rec[1]
    return layout, pages, records


def check(image: bytes) -> list[str]:
    """Violations of the store's invariants on ``image`` as it is (empty: consistent)."""
    read = _read(image)
    if read is None:
        return ["no valid superblock"]
    layout, pages, records = read
    out = [f"page {k}: bad page" for k, p in pages.items() if p is None]
    for txid, entries in sorted(records.items()):
        for key, value in entries:
            page = pages.get(key)
            if key >= layout.accounts:
                out.append(f"tx {txid}: key {key} outside the store")
            elif page is not None and page[0] < txid:
                out.append(f"tx {txid} committed but not applied to key {key} (page holds tx {page[0]})")
            elif page is not None and page[0] == txid and page[1] != value:
                out.append(f"tx {txid}: key {key} holds {page[1]}, the log says {value}")
    for key, page in pages.items():
        if page is not None and page[0] > 0 and page[0] not in records and \
                max((t for t in records if layout.log_offset(t) == layout.log_offset(page[0])), default=0) < page[0]:
            out.append(f"page {key} holds tx {page[0]} whose commit record is missing")
    if not out:
        total = sum(p[1] for p in pages.values() if p is not None)
        if total != layout.total:
            out.append(f"balances add up to {total}, not {layout.total}")
    return out


def recover(image: bytes) -> bytes:
    """Redo: apply every committed record to the pages it is newer than (the image is not changed)."""
    read = _read(image)
    if read is None:
        return image
    layout, pages, records = read
    out = bytearray(image)
    for txid, entries in sorted(records.items()):
        for key, value in entries:
            page = pages.get(key)
            if key < layout.accounts and (page is None or page[0] < txid):
                pages[key] = (txid, value)
                off = layout.page_offset(key)
                out[off:off + BLOCK] = encode_page(key, txid, value)
    return bytes(out)


# ------------------------------------------------------------------------------------ the application


@dataclass
class TxStats:
    transactions: int = 0
    writes: int = 0
    quiesces: int = 0
    last_wnum: int = 0
    held_s: float = 0.0


class TxStore:
    """The store's application: one transaction at a time, its writes numbered from ``start_wnum``."""

    def __init__(self, client: BlockClient, layout: Layout, *, disk_index: int = 0, start_wnum: int = 1,
                 seed: int = 0, max_hold_s: float = 30.0) -> None:
        self.client = client
        self.layout = layout
        self.disk_index = disk_index
        self.next_wnum = start_wnum
        self.rng = random.Random(seed)
        self.max_hold_s = max_hold_s
        self.balances = [layout.total // layout.accounts] * layout.accounts
        self.txid = 0
        self.stats = TxStats()
        self._tx = asyncio.Lock()
        self._hold: asyncio.TimerHandle | None = None
        self._held_at = 0.0

    @classmethod
    def new(cls, client: BlockClient, accounts: int = 64, log_blocks: int = 16, **kw: object) -> TxStore:
        layout = Layout(accounts, log_blocks, accounts * DEFAULT_BALANCE)
        return cls(client, layout, **kw)  # type: ignore[arg-type]

    async def _write(self, offset: int, block: bytes) -> None:
        wnum, self.next_wnum = self.next_wnum, self.next_wnum + 1
        await self.client.write(self.disk_index, wnum, offset, block)
        self.stats.writes, self.stats.last_wnum = self.stats.writes + 1, wnum

    async def format(self) -> None:
        """Every page, then the superblock (a store without a valid superblock does not exist)."""
        async with self._tx:
            for key, balance in enumerate(self.balances):
                await self._write(self.layout.page_offset(key), encode_page(key, 0, balance))
            await self._write(0, encode_super(self.layout))

    async def transfer(self, a: int, b: int, amount: int) -> int:
        """Move ``amount`` from account ``a`` to ``b`` (a committed transaction); its txid."""
        async with self._tx:
            self.txid += 1
            new_a, new_b = self.balances[a] - amount, self.balances[b] + amount
            await self._write(self.layout.log_offset(self.txid), encode_record(self.txid, [(a, new_a), (b, new_b)]))
            await self._write(self.layout.page_offset(a), encode_page(a, self.txid, new_a))
            await self._write(self.layout.page_offset(b), encode_page(b, self.txid, new_b))
            self.balances[a], self.balances[b] = new_a, new_b
            self.stats.transactions += 1
            return self.txid

    async def run(self, stop: asyncio.Event, duration_s: float, pause_s: float = 0.0) -> TxStats:
        deadline = time.monotonic() + duration_s
        while not stop.is_set() and time.monotonic() < deadline:
            a, b = self.rng.sample(range(self.layout.accounts), 2)
            await self.transfer(a, b, self.rng.randrange(1, 100))
            await asyncio.sleep(pause_s)  # also lets a quiesce in
        return self.stats

    async def quiesce(self) -> None:
        """Wait for the transaction in progress; hold the next until :meth:`resume` (or max_hold_s)."""
        if self._hold is not None:
            return
        await self._tx.acquire()
        self._held_at = time.monotonic()
        self.stats.quiesces += 1
        self._hold = asyncio.get_running_loop().call_later(self.max_hold_s, self.resume)

    def resume(self) -> None:
        if self._hold is None:
            return
        self._hold.cancel()
        self._hold = None
        self.stats.held_s += time.monotonic() - self._held_at
        self._tx.release()


class ControlServer:
    """Unix socket, one line per command: ``freeze`` (answered ``ok`` once quiesced), ``thaw``, ``stats``."""

    def __init__(self, path: Path, store: TxStore) -> None:
        self.path = Path(path)
        self.store = store
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            command = (await reader.readline()).decode(errors="replace").strip()
            if command == "freeze":
                await self.store.quiesce()
                reply = "ok"
            elif command == "thaw":
                self.store.resume()
                reply = "ok"
            elif command == "stats":
                reply = json.dumps(self.store.stats.__dict__)
            else:
                reply = f"error unknown command {command[:32]!r}"
            writer.write(reply.encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def send_command(path: Path, command: str, timeout_s: float = 30.0) -> str:
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            return (await reader.readline()).decode(errors="replace").strip()
        finally:
            writer.close()


# ------------------------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent.txstore", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="format (optionally) and run transfers through the agent")
    run.add_argument("--socket", required=True, type=Path)
    run.add_argument("--control", required=True, type=Path)
    run.add_argument("--disk-index", type=int, default=0)
    run.add_argument("--accounts", type=int, default=64)
    run.add_argument("--log-blocks", type=int, default=16)
    run.add_argument("--duration-s", type=float, default=10.0)
    run.add_argument("--start-wnum", type=int, default=1)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--format", action="store_true")
    hook = sub.add_parser("hook", help="quiesce (freeze) or resume (thaw) a running store")
    hook.add_argument("--control", required=True, type=Path)
    hook.add_argument("--timeout-s", type=float, default=30.0)
    hook.add_argument("command", choices=["freeze", "thaw"])
    chk = sub.add_parser("check", help="the store's consistency check on an image")
    chk.add_argument("image", type=Path)
    chk.add_argument("--recover", action="store_true", help="redo the committed log first")
    return p


async def _run(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    async with BlockClient(args.socket) as client:
        store = TxStore.new(client, args.accounts, args.log_blocks, disk_index=args.disk_index,
                            start_wnum=args.start_wnum, seed=args.seed)
        if args.format:
            await store.format()
        control = ControlServer(args.control, store)
        await control.start()
        try:
            stats = await store.run(asyncio.Event(), args.duration_s)
        finally:
            await control.stop()
    out(json.dumps(stats.__dict__))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "hook":
        try:
            reply = asyncio.run(send_command(args.control, args.command, args.timeout_s))
        except (OSError, TimeoutError) as exc:
            print(f"txstore hook: {exc!r}", file=sys.stderr)
            return 1
        print(reply)
        return 0 if reply == "ok" else 1
    if args.cmd == "check":
        image = args.image.read_bytes()
        problems = check(recover(image) if args.recover else image)
        print("\n".join(problems) or "consistent")
        return 1 if problems else 0
    return asyncio.run(_run(args, print))


if __name__ == "__main__":
    sys.exit(main())
