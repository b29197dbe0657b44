"""Prometheus ``/metrics`` for every daemon: a per-daemon registry, collected lazily at scrape time.

Rules:
- Never the process-global registry: several daemons share one process in tests, and each daemon
  exposes only its own series. :func:`new_registry` makes a registry holding one
  :class:`LazyCollector`, which calls the daemon's ``collect`` function on every scrape (nothing is
  updated on the hot path; the collector reads the state the daemon keeps anyway).
- Series are named ``drlab_<what>_<unit>``; counters end in ``_total``; label values are ids.
- The handler answers the text exposition format (``text/plain; version=...``); who may call it is
  the app's auth middleware and :func:`common.http.require_role` (the admin certificate; on the CS
  an operator session too) — a scrape without credentials gets the usual 401 JSON error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["CollectorRegistry", "LazyCollector", "counter", "gauge", "keyed", "new_registry", "render",
           "render_families", "response"]

Families = Callable[[], Iterable[Metric]]
Labelled = Mapping[Any, float]  # a tuple of label values (in the family's label order) -> value


class LazyCollector(Collector):
    """Yields what ``families()`` builds at the moment of the scrape."""

    def __init__(self, families: Families) -> None:
        self._families = families

    def __repr__(self) -> str:
        return f"LazyCollector({getattr(self._families, '__qualname__', self._families)!r})"

    def collect(self) -> Iterable[Metric]:
        return list(self._families())


def new_registry(families: Families) -> CollectorRegistry:
    """A registry of its own (``auto_describe`` off: nothing is collected at registration)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LazyCollector(families))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def render_families(families: Iterable[Metric]) -> bytes:
    """Render families computed beforehand (the CS reads its database asynchronously first)."""
    fixed = list(families)
    return render(new_registry(lambda: fixed))


def response(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def keyed(values: Mapping[str, float]) -> dict[tuple[str, ...], float]:
    """{id: value} -> {(id,): value}: the samples of a family with one label."""
    return {(k,): float(v) for k, v in values.items()}


def gauge(name: str, doc: str, value: float | None = None, *, labels: Sequence[str] = (),
          values: Labelled | None = None) -> GaugeMetricFamily:
    """A gauge: one unlabelled ``value``, or one sample per entry of ``values``."""
    if not labels:
        return GaugeMetricFamily(name, doc, value=float(value or 0.0))
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for key, v in sorted((values or {}).items()):
        family.add_metric(list(key), float(v))
    return family


def counter(name: str, doc: str, value: float | None = None, *, labels: Sequence[str] = (),
            values: Labelled | None = None) -> CounterMetricFamily:
    """A counter (``name`` without ``_total``: the client library appends it)."""
    base = name.removesuffix("_total")
    if not labels:
        return CounterMetricFamily(base, doc, value=float(value or 0.0))
    family = CounterMetricFamily(base, doc, labels=list(labels))
    for key, v in sorted((values or {}).items()):
        family.add_metric(list(key), float(v))
    return family
