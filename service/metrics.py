"""Prometheus metrics, correct with one process or many.

With several workers, ``lossd serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers
start; prometheus-client then keeps every value in a per-process file, and ``/metrics``
(served by any worker) sums them with ``MultiProcessCollector``.

A worker that dies (SIGKILL, OOM) leaves its files behind. Its counters stay in the sums
(totals must never go down, or Prometheus reads a counter reset), but its live gauge
(``lossd_requests_in_flight``, held at whatever it was serving when it died) must go:
each scrape removes the live-gauge files of processes that no longer exist.
"""

from __future__ import annotations

import os
import re

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest, multiprocess)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The service's metrics; one instance per app (tests build many apps)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # *_created series double the output and nobody graphs them
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        # In multiprocess mode values live in files and are collected at scrape time,
        # so the metrics are not registered anywhere.
        self.registry = None if self.multiprocess_dir else CollectorRegistry()
        reg = {"registry": self.registry}
        self.requests = Counter("lossd_requests", "HTTP requests by route, method and status.",
                                ("route", "method", "status"), **reg)
        self.latency = Histogram("lossd_request_duration_seconds", "Time from request start to "
                                 "the last response byte, by route.", ("route",), buckets=_BUCKETS, **reg)
        self.elements = Counter("lossd_elements", "Array elements processed by the kernels, by route.",
                                ("route",), **reg)
        self.in_flight = Gauge("lossd_requests_in_flight", "Requests being handled now.",
                               multiprocess_mode="livesum", **reg)

    def render(self) -> bytes:
        if self.multiprocess_dir:
            drop_dead_live_gauges(self.multiprocess_dir)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def drop_dead_live_gauges(path: str) -> list[int]:
    """Remove the live-gauge files of processes that have exited; returns their pids."""
    dead = set()
    try:
        names = os.listdir(path)
    except OSError:
        return []
    for name in names:
        m = _LIVE_GAUGE_FILE.match(name)
        if m and not _alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return sorted(dead)
