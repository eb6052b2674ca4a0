"""What the service stores (`JobRecord`) and what it returns (`JobOut`, `JobPage`), kept apart so
that internal bookkeeping (tenant, cancel flag, attempts, heartbeats) never leaks into the API."""

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


class JobLinks(BaseModel):
    self: str
    cancel: str
    artifacts: dict[str, str]


class JobOut(BaseModel):
    """The job object of the HTTP contract."""

    id: str
    status: Status
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    config: dict[str, Any]
    progress: JobProgress | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    cancel_requested: bool
    links: JobLinks

    @classmethod
    def of(cls, record: JobRecord) -> JobOut:
        base = f"/jobs/{record.id}"
        return cls(
            id=record.id,
            status=record.status,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            config=record.config,
            progress=record.progress,
            result=record.result,
            error=record.error,
            cancel_requested=record.cancel_requested and not record.terminal,
            links=JobLinks(
                self=base,
                cancel=f"{base}/cancel",
                artifacts={name: f"{base}/{name}" for name in ARTIFACTS},
            ),
        )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        None, description="pass as `cursor` to get the next (older) page; null on the last page"
    )
    links: dict[str, str]


class Problem(BaseModel):
    """RFC 9457 problem details (extension members allowed)."""

    model_config = {"extra": "allow"}

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
