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


CallbackStatus = Literal["pending", "delivered", "failed", "refused"]


class Callback(BaseModel):
    """The webhook of a job (jobs/webhooks/): where its end is POSTed and how that went."""

    url: str
    status: CallbackStatus = "pending"
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None  # pending: the earliest time of the next attempt


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
    callback: Callback | None = None
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

    @property
    def callback_due(self) -> datetime | None:
        """When its webhook is to be (re)tried: only once the job has ended, while pending."""
        if not self.terminal or self.callback is None or self.callback.status != "pending":
            return None
        return self.callback.next_attempt_at or self.finished_at
