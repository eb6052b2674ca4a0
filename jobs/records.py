"""What a job is as stored (`JobRecord`, `JobProgress`): written by the API and the workers, read
by both. What the API returns is built from it in service/schemas.py, so that internal
bookkeeping (tenant, cancel flag, attempts, heartbeats) never leaks into the API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
ARTIFACTS: tuple[str, ...] = ("masks", "weights", "model", "report", "report.png")


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobProgress(BaseModel):
    iteration: int = 0
    iterations: int
    density: float = 1.0


class JobRecord(BaseModel):
    """A job as stored; the single source of truth for its status (never Celery's results)."""

    id: str
    tenant: str
    status: Status = "queued"
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    config: dict[str, Any]
    input_format: str
    input_bytes: int
    progress: JobProgress | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # bookkeeping, not returned
    seq: int = 0  # store-assigned, increasing: the listing order
    cancel_requested: bool = False
    attempts: int = 0
    run_id: str | None = None
    worker: str | None = None
    heartbeat_at: datetime | None = None
    input_held: bool = True  # False once the upload is deleted (the job ended)
    artifact_bytes: int = 0  # bytes of its published artifacts

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def stored_input_bytes(self) -> int:
        """What its upload holds in the artifact store (counted against the tenant's quota)."""
        return self.input_bytes if self.input_held else 0
