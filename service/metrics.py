"""Prometheus metrics of the API process, served at `GET /metrics`: request counters and
latencies, plus gauges read from the stores at each scrape (jobs queued and running and bytes
held per tenant, from the job store's indexes; size and free space of the artifact volume)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from fastapi import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from jobs.stores import TenantUsage


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "synflow_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "synflow_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
        )
        self.jobs_submitted = Counter(
            "synflow_jobs_submitted_total", "Jobs accepted by POST /prune", registry=self.registry
        )
        self.upload_bytes = Counter(
            "synflow_upload_bytes_total", "Bytes of accepted model uploads", registry=self.registry
        )

        self.jobs = Gauge(
            "synflow_jobs",
            "Jobs queued or running, per tenant",
            ["tenant", "status"],
            registry=self.registry,
        )
        self.stored_bytes = Gauge(
            "synflow_stored_bytes",
            "Bytes held in the artifact store per tenant: kind=inputs (uploads kept until their "
            "job ends) or artifacts (published results)",
            ["tenant", "kind"],
            registry=self.registry,
        )
        self.volume_bytes = Gauge(
            "synflow_artifact_volume_bytes",
            "The artifact store's filesystem: kind=total or free bytes",
            ["kind"],
            registry=self.registry,
        )

    def observe_stores(self, usage: dict[str, TenantUsage], artifacts_root: Path) -> None:
        """Refresh the store gauges (tenants with nothing left disappear from them)."""
        self.jobs.clear()
        self.stored_bytes.clear()
        for tenant, u in sorted(usage.items()):
            self.jobs.labels(tenant, "queued").set(u.queued)
            self.jobs.labels(tenant, "running").set(u.running)
            self.stored_bytes.labels(tenant, "inputs").set(u.input_bytes)
            self.stored_bytes.labels(tenant, "artifacts").set(u.artifact_bytes)
        disk = shutil.disk_usage(artifacts_root)
        self.volume_bytes.labels("total").set(disk.total)
        self.volume_bytes.labels("free").set(disk.free)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


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
