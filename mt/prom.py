"""The MT's Prometheus series, read at scrape time from the disk stores, their workers and the
catalog (the same sources as the heartbeat's metrics, mt/metrics.py). The catalog is SQLite:
render in a worker thread (mt/ingest.py does).

| series | kind | labels |
|---|---|---|
| ``drlab_mt_applied_bytes_total`` (data bytes applied since the disk was opened) | counter | disk |
| ``drlab_mt_applied_seq`` / ``drlab_mt_received_seq`` (contiguous, current generation) | gauge | disk |
| ``drlab_mt_generation`` | gauge | disk |
| ``drlab_mt_staged_batches`` / ``drlab_mt_staged_bytes`` (received, not yet applied) | gauge | disk |
| ``drlab_mt_apply_latency_seconds`` (staged -> applied, latest 256 points) | gauge | disk, quantile |
| ``drlab_mt_lag_seconds`` (source write -> received at the MT, latest 256 points) | gauge | disk, quantile |
| ``drlab_mt_latest_point_timestamp_seconds`` (source time of the latest point; RPO = now - it) | gauge | disk |
| ``drlab_mt_retention_paused`` / ``drlab_mt_retention_low_space`` (mt/pruner.py) | gauge | disk |
| ``drlab_mt_apply_failures`` (consecutive failed applies) | gauge | disk |
"""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily, Metric

from common.promexport import counter, gauge, keyed
from mt.apply import RECENT
from mt.metrics import percentile
from mt.settings import Registry
from mt.worker import DiskWorker

QUANTILES = (0.5, 0.9, 0.99)
NS = 1e9


def _quantiles(name: str, doc: str, per_disk: dict[str, list[float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["disk", "quantile"])
    for disk_id, values in sorted(per_disk.items()):
        if values:
            for q in QUANTILES:
                family.add_metric([disk_id, f"{q:g}"], percentile(values, q * 100))
    return family


def families(workers: dict[str, DiskWorker], registry: Registry) -> list[Metric]:
    """Every MT series, one sample per disk held here (blocking: the catalog is read)."""
    applied: dict[str, float] = {}
    received: dict[str, float] = {}
    gens: dict[str, float] = {}
    staged_n: dict[str, float] = {}
    staged_b: dict[str, float] = {}
    latest: dict[str, float] = {}
    paused: dict[str, float] = {}
    low: dict[str, float] = {}
    failures: dict[str, float] = {}
    latency: dict[str, list[float]] = {}
    lag: dict[str, list[float]] = {}
    for disk_id, worker in sorted(workers.items()):
        store = worker.store
        disk = registry.disks.get(disk_id)
        gen = store.current_generation(disk.generation if disk else 0)
        gens[disk_id] = gen
        received[disk_id], applied[disk_id] = store.progress(gen)
        staged_n[disk_id], staged_b[disk_id] = store.staging.backlog()
        points = store.catalog.recent(disk_id, RECENT)
        latest[disk_id] = points[0].t_last_ns / NS if points else 0.0
        latency[disk_id] = [max(0, p.applied_ns - p.received_ns) / NS for p in points]
        lag[disk_id] = [max(0, n) / NS for n in list(store.lags_ns)]
        pruner = worker.pruner
        paused[disk_id] = 1.0 if pruner is not None and pruner.paused else 0.0
        low[disk_id] = 1.0 if pruner is not None and pruner.low_space else 0.0
        failures[disk_id] = worker.failures
    return [
        counter("drlab_mt_applied_bytes_total", "Data bytes applied to the replica since the disk was opened.",
                labels=("disk",), values=keyed({d: w.store.applied_bytes for d, w in workers.items()})),
        gauge("drlab_mt_applied_seq", "Highest applied seq of the current generation.",
              labels=("disk",), values=keyed(applied)),
        gauge("drlab_mt_received_seq", "Highest contiguous received seq of the current generation.",
              labels=("disk",), values=keyed(received)),
        gauge("drlab_mt_generation", "The disk's current generation.", labels=("disk",), values=keyed(gens)),
        gauge("drlab_mt_staged_batches", "Batches received and staged, not yet applied.",
              labels=("disk",), values=keyed(staged_n)),
        gauge("drlab_mt_staged_bytes", "Bytes of staged batches not yet applied.",
              labels=("disk",), values=keyed(staged_b)),
        _quantiles("drlab_mt_apply_latency_seconds", f"Staged to applied, over the latest {RECENT} points.",
                   latency),
        _quantiles("drlab_mt_lag_seconds", f"Source write to received at the MT, over the latest {RECENT} points.",
                   lag),
        gauge("drlab_mt_latest_point_timestamp_seconds", "Source time up to which the replica holds every write.",
              labels=("disk",), values=keyed(latest)),
        gauge("drlab_mt_retention_paused", "1 while retention pauses apply (low space, action pause).",
              labels=("disk",), values=keyed(paused)),
        gauge("drlab_mt_retention_low_space", "1 while the journal's volume is low on space.",
              labels=("disk",), values=keyed(low)),
        gauge("drlab_mt_apply_failures", "Consecutive failed applies of the disk.",
              labels=("disk",), values=keyed(failures)),
    ]
