"""What the API returns (`JobOut`, `JobPage`, `Problem`), built from the stored `JobRecord`
(jobs/records.py) so that internal bookkeeping never leaks into the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from jobs.records import ARTIFACTS, JobProgress, JobRecord, Status


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
