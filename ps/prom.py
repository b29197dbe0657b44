"""The PS's Prometheus series, read at scrape time from the cache, the throttle and the progress
the PS keeps for its heartbeat (ps/service.py ``metrics``). No side effect: the throttle is not
re-evaluated here (the cache's own checks and the heartbeat do that), the filesystem's free space
is the cache's rate-limited sample.

| series | kind | labels |
|---|---|---|
| ``drlab_ps_received_bytes_total`` / ``drlab_ps_received_batches_total`` | counter | disk |
| ``drlab_ps_uploaded_bytes_total`` / ``drlab_ps_uploaded_batches_total`` | counter | disk |
| ``drlab_ps_backlog_bytes`` / ``drlab_ps_backlog_batches`` (cached, not yet at the MT) | gauge | disk |
| ``drlab_ps_mt_applied_seq`` (the MT's applied seq of the disk's current generation) | gauge | disk |
| ``drlab_ps_cache_free_bytes``, ``drlab_ps_cache_used_bytes``, ``drlab_ps_cache_max_bytes`` | gauge | |
| ``drlab_ps_throttled`` (1: cache-wide throttle) / ``drlab_ps_disk_throttled`` | gauge | -, disk |
| ``drlab_ps_throttle_refusals_total`` (507s answered) | counter | |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.core import Metric

from common.promexport import counter, gauge, keyed
from ps.cache import BatchCache
from ps.state import Registry


def families(registry: Registry, cache: BatchCache, received: Mapping[str, tuple[int, int]]) -> list[Metric]:
    """Every PS series; ``received`` is {disk: (batches, bytes)} new batches cached since start."""
    disks = sorted(set(registry.disks) | set(cache.disks()) | set(received))
    backlog = {d: cache.backlog(d) for d in disks}
    progress = {d: registry.progress[d] for d in disks if d in registry.progress}  # never creates one
    sample = cache.sample()
    throttle = cache.throttle
    out: list[Any] = [
        counter("drlab_ps_received_bytes_total", "Bytes of new change batches cached from agents.",
                labels=("disk",), values=keyed({d: r[1] for d, r in received.items()})),
        counter("drlab_ps_received_batches_total", "New change batches cached from agents.",
                labels=("disk",), values=keyed({d: r[0] for d, r in received.items()})),
        counter("drlab_ps_uploaded_bytes_total", "Sealed bytes the MT accepted.",
                labels=("disk",), values=keyed({d: p.uploaded_bytes for d, p in progress.items()})),
        counter("drlab_ps_uploaded_batches_total", "Batches the MT accepted.",
                labels=("disk",), values=keyed({d: p.uploaded_batches for d, p in progress.items()})),
        gauge("drlab_ps_backlog_bytes", "Cached bytes not yet uploaded to the MT.",
              labels=("disk",), values=keyed({d: b[1] for d, b in backlog.items()})),
        gauge("drlab_ps_backlog_batches", "Cached batches not yet uploaded to the MT.",
              labels=("disk",), values=keyed({d: b[0] for d, b in backlog.items()})),
        gauge("drlab_ps_mt_applied_seq", "The MT's applied seq of the disk's current generation.",
              labels=("disk",), values=keyed({d: p.mt_of(registry.generation(d))[1] for d, p in progress.items()})),
        gauge("drlab_ps_cache_free_bytes", "Free cache space: the smaller of the limit's and the filesystem's.",
              sample.free_bytes),
        gauge("drlab_ps_cache_used_bytes", "Bytes held in the cache.", cache.used_bytes),
        gauge("drlab_ps_cache_max_bytes", "The cache's configured limit.", cache.max_bytes),
        gauge("drlab_ps_throttled", "1 while the cache-wide throttle refuses new batches.",
              1.0 if throttle.cache.active else 0.0),
        gauge("drlab_ps_disk_throttled", "1 while a disk's backlog throttle refuses its new batches.",
              labels=("disk",), values={(d,): 1.0 if s.active else 0.0 for d, s in throttle.disks.items()}),
        counter("drlab_ps_throttle_refusals_total", "507 throttled answers, whatever the reason.",
                cache.refused_total),
    ]
    return out
