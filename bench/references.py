"""Same-run reference ceilings that drlab's data-path throughput figures are reported against.

``python -m bench.references [--mb 256] [--profile mixed|incompressible]`` (``make bench-references``).

Over the same bytes (``common/datagen.py``, 4 MiB chunks of the chosen profile):

A. **Raw single-hop TLS copy**: an aiohttp HTTPS server (mutual TLS, certificates from
   ``common/tls.py``) on 127.0.0.1 port 0, **in its own process** so each side's CPU is its
   own; its handler streams each request body (read in chunks) into a new file in a temp dir,
   fsyncs it and answers 201. An aiohttp client PUTs the data as 4 MiB bodies, 4 in flight.
B. **Raw lz4 frame compress + AES-256-GCM seal** of each chunk (``lz4.frame.compress``,
   ``AESGCM`` with a 96-bit nonce per chunk) in this process: one thread, then a pool of two
   threads (both release the GIL).

Reports MB/s (10^6 bytes/s of input) and CPU seconds per GB (10^9 bytes) of input, the lz4
ratio of the data and the machine, as JSON and a markdown table in ``bench/results/`` and on
stdout. Nothing of drlab's own data path runs here: these are the ceilings, not drlab.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing as mp
import os
import ssl
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import lz4.frame
from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.results_io import machine, publish
from common import datagen, tls

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 4 << 20
WINDOW = 4
READ_CHUNK = 1 << 20
SEED = 0x5EED
PROFILES = {"mixed": "mixed", "incompressible": "random"}  # --profile -> datagen profile
START_TIMEOUT_S = 60.0
MIN_SEAL_S = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.references", description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=256, help="MiB of data (default 256), whole 4 MiB chunks")
    p.add_argument("--profile", choices=PROFILES, default="mixed", help="data profile (default mixed)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (default bench/results)")
    p.add_argument("--quiet", action="store_true", help="print only the markdown table")
    args = p.parse_args(argv)
    if args.mb < 4:
        p.error("--mb must be >= 4")
    return args


def make_chunks(profile: str, mb: int) -> list[bytes]:
    """``mb`` MiB of ``profile`` data as 4 MiB chunks (deterministic: same seed every run)."""
    prof = datagen.profile(PROFILES[profile])
    return [datagen.data_for(SEED, i, CHUNK, prof) for i in range(mb * (1 << 20) // CHUNK)]


def lz4_ratio(chunks: list[bytes]) -> float:
    """Input bytes over lz4-frame-compressed bytes, chunk by chunk as the data path compresses."""
    return sum(map(len, chunks)) / sum(len(lz4.frame.compress(c)) for c in chunks)


def figures(nbytes: int, wall_s: float, cpu_s: dict[str, float]) -> dict[str, Any]:
    """MB/s (10^6 bytes/s) and CPU s per GB (10^9 bytes) of input, per CPU consumer and in all."""
    out: dict[str, Any] = {"wall_s": round(wall_s, 4), "mb_per_s": round(nbytes / wall_s / 1e6, 1)}
    for who, s in cpu_s.items():
        out[f"{who}_cpu_s"] = round(s, 4)
        out[f"{who}_cpu_s_per_gb"] = round(s / nbytes * 1e9, 3)
    total = sum(cpu_s.values())
    out["cpu_s_per_gb"] = round(total / nbytes * 1e9, 3)
    return out


# ---------------------------------------------------------------- A: TLS copy


def make_identities(root: Path) -> tuple[tls.IdentityFiles, tls.IdentityFiles]:
    """A throwaway CA, a server identity for 127.0.0.1 and a client identity."""
    ca_key, ca_cert = tls.make_ca("bench CA")
    server, client = tls.IdentityFiles(root / "server"), tls.IdentityFiles(root / "client")
    tls.issue_local(ca_key, ca_cert, server, component_id="bench-server", role="ps",
                    hosts=["127.0.0.1"], meta={})
    tls.issue_local(ca_key, ca_cert, client, component_id="bench-client", role="agent", hosts=[], meta={})
    return server, client


def server_main(conn: Any, identity_dir: str, data_dir: str) -> None:
    """The server process: sends ("port", n), then answers "cpu" with its CPU seconds until "stop"."""
    asyncio.run(_serve(conn, tls.IdentityFiles(Path(identity_dir)), Path(data_dir)))


async def _serve(conn: Any, identity: tls.IdentityFiles, data_dir: Path) -> None:
    counter = iter(range(1 << 62))

    async def put(request: web.Request) -> web.Response:
        f = await asyncio.to_thread((data_dir / f"body-{next(counter)}").open, "wb", buffering=0)
        try:
            async for piece in request.content.iter_chunked(READ_CHUNK):
                f.write(piece)  # into the page cache: fast enough to stay on the event loop
            await asyncio.to_thread(os.fsync, f.fileno())
        finally:
            f.close()
        return web.Response(status=201)

    ctx = tls.server_context(identity)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: a client certificate is required
    app = web.Application(client_max_size=2 * CHUNK)
    app.router.add_put("/blob", put)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    conn.send(("port", runner.addresses[0][1]))
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, conn.recv) != "stop":
        conn.send(("cpu", time.process_time()))
    await runner.cleanup()


async def _put_all(port: int, ctx: Any, chunks: list[bytes], server_cpu: Callable[[], float]) -> dict[str, Any]:
    """PUT every chunk as one body, WINDOW requests in flight over WINDOW keep-alive connections:
    the figures, measured after one unmeasured warm-up request per connection (the TLS handshakes)."""
    todo = iter(chunks)
    url = f"https://127.0.0.1:{port}/blob"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=WINDOW)) as session:

        async def worker() -> None:
            for body in todo:
                async with session.put(url, data=body) as resp:
                    if resp.status != 201:
                        raise SystemExit(f"the server answered {resp.status}: {await resp.text()}")

        async def warm_up() -> None:
            async with session.put(url, data=b"warm-up") as resp:
                resp.raise_for_status()

        await asyncio.gather(*(warm_up() for _ in range(WINDOW)))
        server0, c0, t0 = server_cpu(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(WINDOW)))
        wall, client = time.perf_counter() - t0, time.process_time() - c0
        return figures(sum(map(len, chunks)), wall, {"client": client, "server": server_cpu() - server0})


def reference_tls_copy(chunks: list[bytes], workdir: Path) -> dict[str, Any]:
    server_id, client_id = make_identities(workdir / "identities")
    data_dir = workdir / "received"
    data_dir.mkdir()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=server_main, args=(child, str(server_id.directory), str(data_dir)),
                       name="bench-tls-server")
    proc.start()
    try:
        if not parent.poll(START_TIMEOUT_S):
            raise SystemExit(f"the TLS server did not start within {START_TIMEOUT_S:g} s")
        _, port = parent.recv()
        client_ctx = tls.client_context(client_id)

        def server_cpu() -> float:
            parent.send("cpu")
            return float(parent.recv()[1])

        figs = asyncio.run(_put_all(port, client_ctx, chunks, server_cpu))
    finally:
        parent.send("stop")
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    nbytes = sum(map(len, chunks))
    received = sum(p.stat().st_size for p in data_dir.iterdir()) - WINDOW * len(b"warm-up")
    if received != nbytes:
        raise SystemExit(f"the server stored {received} bytes, {nbytes} were sent")
    return {"setup": f"aiohttp {aiohttp.__version__}, mutual TLS over 127.0.0.1, server in its own process "
                     f"(streams each body to a file, fsync, 201), {CHUNK >> 20} MiB bodies, {WINDOW} in flight "
                     "over keep-alive connections (handshakes unmeasured)", **figs}


# ---------------------------------------------------------------- B: lz4 + AES-GCM


def sealer() -> Callable[[int, bytes], bytes]:
    """lz4-frame-compress then AES-256-GCM-seal one chunk under a fresh 96-bit nonce."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    prefix = os.urandom(4)

    def seal(i: int, chunk: bytes) -> bytes:
        return aead.encrypt(prefix + i.to_bytes(8, "big"), lz4.frame.compress(chunk), None)

    return seal


def reference_seal(chunks: list[bytes], threads: int, min_s: float = MIN_SEAL_S) -> dict[str, Any]:
    """Seal every chunk on ``threads`` threads (1 = a plain loop on this thread), in whole passes
    over the data until ``min_s`` seconds have passed (one pass of 128 MB is too short to time)."""
    seal = sealer()
    passes, sealed = 0, 0
    with ThreadPoolExecutor(threads) as pool:
        c0, t0 = time.process_time(), time.perf_counter()
        while passes == 0 or time.perf_counter() - t0 < min_s:
            if threads == 1:
                sealed += sum(len(seal(i, c)) for i, c in enumerate(chunks))
            else:
                sealed += _seal_pooled(pool, seal, chunks, 2 * threads)
            passes += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"setup": f"lz4.frame.compress (default level) + AESGCM-256, {CHUNK >> 20} MiB chunks, "
                     f"{threads} thread{'s' if threads > 1 else ''}, {passes} passes over the data",
            "passes": passes, "sealed_bytes": sealed,
            **figures(passes * sum(map(len, chunks)), wall, {"process": cpu})}


def _seal_pooled(pool: ThreadPoolExecutor, seal: Callable[[int, bytes], bytes], chunks: list[bytes],
                 window: int) -> int:
    """Sealed bytes of every chunk, at most ``window`` in flight: each output is dropped once
    counted, as the data path would send it (``pool.map`` would keep every output alive, and
    the fresh memory's page faults, not lz4 or AES, would set the figure)."""
    inflight: deque[Future[bytes]] = deque()
    total = 0
    for i, chunk in enumerate(chunks):
        if len(inflight) >= window:
            total += len(inflight.popleft().result())
        inflight.append(pool.submit(seal, i, chunk))
    return total + sum(len(f.result()) for f in inflight)


# ---------------------------------------------------------------- report


def report(args: argparse.Namespace, chunks: list[bytes], refs: dict[str, Any]) -> dict[str, Any]:
    return {"benchmark": "references",
            "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "profile": args.profile, "datagen_profile": PROFILES[args.profile],
            "bytes": sum(map(len, chunks)), "chunk_bytes": CHUNK, "lz4_ratio": round(lz4_ratio(chunks), 3),
            "references": refs}


LABELS = {"tls_copy": "A: TLS copy (aiohttp, mTLS, fsync)", "seal_1_thread": "B: lz4 + AES-GCM, 1 thread",
          "seal_2_threads": "B: lz4 + AES-GCM, 2 threads"}


def markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    lines = [f"References, {rep['profile']} data, {rep['bytes'] / 1e6:.0f} MB, lz4 ratio {rep['lz4_ratio']:.2f} "
             f"({rep['time_utc']}; {m['cpus']} CPUs, Python {m['python']}, load {m['loadavg_1m']})", "",
             "| reference | MB/s | CPU s/GB | of which |", "|---|---:|---:|---|"]
    for key, ref in rep["references"].items():
        parts = [f"{k.removesuffix('_cpu_s_per_gb')} {v:.2f}" for k, v in ref.items() if k.endswith("_cpu_s_per_gb")]
        lines.append(f"| {LABELS[key]} | {ref['mb_per_s']:.0f} | {ref['cpu_s_per_gb']:.2f} | {', '.join(parts)} |")
    lines += ["", *(f"- {LABELS[k]}: {ref['setup']}" for k, ref in rep["references"].items())]
    if m["malloc_env"]:
        lines.append(f"- glibc malloc tuned: {' '.join(f'{k}={v}' for k, v in m['malloc_env'].items())}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chunks = make_chunks(args.profile, args.mb)
    refs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="drlab-bench-references-") as tmp:
        refs["tls_copy"] = reference_tls_copy(chunks, Path(tmp))
    refs["seal_1_thread"] = reference_seal(chunks, 1)
    refs["seal_2_threads"] = reference_seal(chunks, 2)
    rep = report(args, chunks, refs)
    publish(rep, markdown(rep), args.out, "references", rep["profile"], show_json=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
