"""Prometheus metrics, served at `GET /metrics` (README, "Metrics").

Two kinds, because API processes and workers are separate processes on any number of machines:

- **this API process**: HTTP requests and their latency by route template (`synflow_http_*`),
  counted in memory; each replica reports its own (sum them across replicas);
- **the whole service**, read from the shared stores at each scrape (`StoreCollector`): jobs
  created and finished, upload bytes, queue-wait and run-time histograms (the job store's
  statistics, jobs/stores/job_stats.py, written in the transaction of each status change,
  whichever process made it), jobs queued and running per tenant, queue depth, running jobs
  per worker, bytes held per tenant, and the artifact volume. Every replica reports the same
  values (aggregate with `max`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from jobs.stores import JobStore, TenantUsage, job_stats

log = logging.getLogger("service")

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)


class Metrics:
    def __init__(self, jobs: JobStore, artifacts_root: Path) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "synflow_http_requests_total",
            "HTTP requests by route template, method and status (this API process)",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "synflow_http_request_duration_seconds",
            "HTTP request latency by route template (this API process)",
            ["route", "method"],
            registry=self.registry,
            buckets=HTTP_BUCKETS,
        )
        self.registry.register(StoreCollector(jobs, artifacts_root))

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


@dataclass
class StoreReading:
    stats: dict[tuple[str, ...], float]
    usage: dict[str, TenantUsage]
    running_per_worker: dict[str, int]
    volume_total: int
    volume_free: int


def read_stores(jobs: JobStore, artifacts_root: Path) -> StoreReading:
    running: dict[str, int] = defaultdict(int)
    for record in jobs.running():
        running[record.worker or "unknown"] += 1
    disk = shutil.disk_usage(artifacts_root)
    return StoreReading(
        stats=jobs.stats(),
        usage=jobs.usage_by_tenant(),
        running_per_worker=dict(running),
        volume_total=disk.total,
        volume_free=disk.free,
    )


class StoreCollector:
    """Reads the stores at each scrape; a store that cannot be read gives
    `synflow_job_store_up 0` (and the error in the log) instead of a failed scrape."""

    def __init__(self, jobs: JobStore, artifacts_root: Path, read: Callable = read_stores):
        self.jobs, self.artifacts_root, self.read = jobs, artifacts_root, read

    def describe(self) -> list[Metric]:
        return []  # read at scrape time only, never at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("synflow_job_store_up", "1 if the job store could be read")
        try:
            reading = self.read(self.jobs, self.artifacts_root)
        except Exception:
            log.exception("/metrics: cannot read the stores")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from job_counters(reading.stats)
        yield from job_histograms(reading.stats)
        yield from usage_gauges(reading)


def job_counters(stats: dict[tuple[str, ...], float]) -> Iterator[Metric]:
    created = CounterMetricFamily(
        "synflow_jobs_created", "Jobs accepted by POST /prune, per tenant", labels=["tenant"]
    )
    uploads = CounterMetricFamily(
        "synflow_upload_bytes",
        "Bytes of accepted uploads (model and calibration data), per tenant",
        labels=["tenant"],
    )
    finished = CounterMetricFamily(
        "synflow_jobs_finished",
        "Jobs that ended, by final status (succeeded, failed, canceled) and tenant",
        labels=["status", "tenant"],
    )
    for parts, value in sorted(stats.items()):
        if parts[0] == "created" and len(parts) == 2:
            created.add_metric([parts[1]], value)
        elif parts[0] == "upload_bytes" and len(parts) == 2:
            uploads.add_metric([parts[1]], value)
        elif parts[0] == "finished" and len(parts) == 3:
            finished.add_metric([parts[1], parts[2]], value)
    yield from (created, uploads, finished)


def job_histograms(stats: dict[tuple[str, ...], float]) -> Iterator[Metric]:
    described = {
        job_stats.QUEUE_WAIT: ("Seconds from submission to a job's first start", []),
        job_stats.DURATION: ("Seconds from a job's start to its end, by status", ["status"]),
    }
    for name, (text, label_names) in described.items():
        family = HistogramMetricFamily(f"synflow_job_{name}", text, labels=label_names)
        bounds = job_stats.BUCKETS[name]
        series: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
        for parts, value in stats.items():
            if parts[0] != name or len(parts) < 2 + len(label_names):
                continue
            labels, rest = parts[1 : 1 + len(label_names)], parts[1 + len(label_names) :]
            key = "le:" + rest[1] if rest[0] == "le" and len(rest) == 2 else rest[0]
            series[labels][key] = value
        for labels, values in sorted(series.items()):
            per_bucket = {
                float(k[3:]): v for k, v in values.items() if k.startswith("le:")
            }  # "+Inf" parses as inf
            buckets = [
                (repr(float(b)), sum(v for le, v in per_bucket.items() if le <= b)) for b in bounds
            ]
            buckets.append(("+Inf", sum(per_bucket.values())))
            family.add_metric(list(labels), buckets, values.get("sum", 0.0))
        yield family


def usage_gauges(reading: StoreReading) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        "synflow_jobs", "Jobs queued or running, per tenant", labels=["tenant", "status"]
    )
    stored = GaugeMetricFamily(
        "synflow_stored_bytes",
        "Bytes held in the artifact store per tenant: kind=inputs (uploads kept until their "
        "job ends) or artifacts (published results)",
        labels=["tenant", "kind"],
    )
    depth = GaugeMetricFamily("synflow_queue_depth", "Jobs queued, all tenants")
    for tenant, u in sorted(reading.usage.items()):
        jobs.add_metric([tenant, "queued"], u.queued)
        jobs.add_metric([tenant, "running"], u.running)
        stored.add_metric([tenant, "inputs"], u.input_bytes)
        stored.add_metric([tenant, "artifacts"], u.artifact_bytes)
    depth.add_metric([], sum(u.queued for u in reading.usage.values()))
    per_worker = GaugeMetricFamily(
        "synflow_worker_running_jobs",
        "Jobs running, per worker (host:pid as in the job record); idle workers are absent",
        labels=["worker"],
    )
    for worker, count in sorted(reading.running_per_worker.items()):
        per_worker.add_metric([worker], count)
    volume = GaugeMetricFamily(
        "synflow_artifact_volume_bytes",
        "The artifact store's filesystem: kind=total or free bytes",
        labels=["kind"],
    )
    volume.add_metric(["total"], reading.volume_total)
    volume.add_metric(["free"], reading.volume_free)
    yield from (jobs, stored, depth, per_worker, volume)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (plain ASGI, so that request
    bodies stream through untouched)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(template, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(template, scope["method"]).observe(
                time.perf_counter() - started
            )
