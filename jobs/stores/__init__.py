"""Job and artifact stores, shared by the API and the worker.

`JobStore` is the interface; the embedded mode uses `SqliteJobStore` (one file under the data
dir), production uses `RedisJobStore`. Both offer one atomic read-modify-write, `update`, on
which every status transition (jobs/lifecycle.py) is built, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from jobs.records import JobRecord
from jobs.settings import Settings

Change = Callable[[JobRecord], JobRecord | None]


@dataclass(frozen=True)
class TenantUsage:
    """What a tenant holds, from the stores' indexes (quotas, fairness, /metrics)."""

    queued: int = 0
    running: int = 0
    input_bytes: int = 0  # uploads still held
    artifact_bytes: int = 0  # published artifacts

    @property
    def active(self) -> int:
        return self.queued + self.running

    @property
    def stored_bytes(self) -> int:
        return self.input_bytes + self.artifact_bytes


class JobStore(Protocol):
    def create(self, record: JobRecord) -> JobRecord:
        """Store a new record; returns it with its `seq` assigned."""

    def get(self, job_id: str) -> JobRecord | None: ...

    def list(self, tenant: str, limit: int, before_seq: int | None = None) -> list[JobRecord]:
        """The tenant's jobs with seq below `before_seq` (all if None), newest first."""

    def update(self, job_id: str, change: Change) -> JobRecord | None:
        """Atomically apply `change` to the stored record. `change` returns the new record, or
        None to leave it as it is. Returns the record as stored afterwards (None if missing)."""

    def delete(self, job_id: str) -> bool: ...

    def running(self) -> list[JobRecord]:
        """Every record in status `running` (for requeueing those whose worker was lost)."""

    def claim_next(self, change: Change, max_running: int) -> JobRecord | None:
        """Atomically pick the next queued job in fair order (jobs/scheduling.py: round-robin
        over tenants with fewer than `max_running` running jobs, 0: no cap) and apply `change`
        to it, in one step, so that two workers can neither take one job nor exceed a tenant's
        cap. Returns the record as stored afterwards; None when no queued job may start."""

    def usage(self, tenant: str) -> TenantUsage: ...

    def usage_by_tenant(self) -> dict[str, TenantUsage]:
        """Every tenant that has jobs queued or running or bytes stored."""

    def finished_before(self, cutoff: datetime, limit: int) -> list[str]:
        """Ids of up to `limit` jobs that ended before `cutoff`, oldest first (expiry)."""

    def stats(self) -> dict[tuple[str, ...], float]:
        """The job statistics (jobs/stores/job_stats.py), added to by every change."""

    def callbacks_due(self, now: datetime, limit: int) -> list[str]:
        """Ids of up to `limit` ended jobs whose webhook is pending and due by `now`, the
        longest due first (jobs/webhooks/)."""

    def ensure_indexes(self) -> None:
        """Index records written before the store had its indexes (after an upgrade)."""

    def ping(self) -> None:
        """Raise if the store cannot be reached."""


def open_job_store(settings: Settings) -> JobStore:
    if settings.embedded:
        from jobs.stores.sqlite_jobs import SqliteJobStore

        return SqliteJobStore(settings.sqlite_path)
    from jobs.stores.redis_jobs import RedisJobStore

    assert settings.redis_url is not None
    return RedisJobStore(settings.redis_url, settings.redis_prefix)
