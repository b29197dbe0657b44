"""Heartbeat metrics of the MT: per disk progress, backlog, RPO percentiles, the time of the latest
applied recovery point (the CS computes each disk's RPO from it) and bytes applied."""

from __future__ import annotations

from typing import Any

from mt.settings import Registry
from mt.worker import DiskWorker


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100.0 * (len(ordered) - 1))))
    return float(ordered[index])


def disk_metrics(worker: DiskWorker, settings_gen: int) -> dict[str, Any]:
    store = worker.store
    gen = store.current_generation(settings_gen)
    received, applied = store.progress(gen)
    batches, nbytes = store.staging.backlog()
    lags_ms = [lag / 1e6 for lag in list(store.lags_ns)]
    latest = store.catalog.latest(store.disk_id)
    return {"generation": gen, "mt_received": received, "mt_applied": applied, "applied_gen": store.applied[0],
            "backlog_batches": batches, "backlog_bytes": nbytes, "applied_bytes": store.applied_bytes,
            "rpo_p50_ms": round(percentile(lags_ms, 50), 3), "rpo_p99_ms": round(percentile(lags_ms, 99), 3),
            "apply_failures": worker.failures,
            "apply_stopped": store.broken,  # why applying stopped until a restart (mt/apply.py), or None
            # the source time up to which the replica holds every write (RPO = now - this; cs/health)
            "latest_point_ns": latest.t_last_ns if latest is not None else 0,
            # retention (mt/pruner.py): paused / low_space raise retention_low_space (cs/health)
            "retention": worker.retention_metrics()}


def collect(workers: dict[str, DiskWorker], registry: Registry) -> dict[str, Any]:
    disks = {}
    for disk_id, worker in sorted(workers.items()):
        disk = registry.disks.get(disk_id)
        disks[disk_id] = disk_metrics(worker, disk.generation if disk else 0)
    return {"disks": disks, "applied_bytes": sum(d["applied_bytes"] for d in disks.values()),
            "backlog_batches": sum(d["backlog_batches"] for d in disks.values())}
