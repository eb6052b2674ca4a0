"""The job object of the HTTP contract: what `GET /jobs/{id}` answers and what a job's webhook
POSTs, built from the stored `JobRecord` so that internal bookkeeping (tenant, cancel flag,
attempts, heartbeats) never leaks out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from jobs.records import ARTIFACTS, Callback, JobProgress, JobRecord, Status


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
    callback: Callback | None = Field(
        None, description="the webhook (`callback_url`) and its delivery, if one was asked for"
    )
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
            callback=record.callback,
            cancel_requested=record.cancel_requested and not record.terminal,
            links=JobLinks(
                self=base,
                cancel=f"{base}/cancel",
                artifacts={name: f"{base}/{name}" for name in ARTIFACTS},
            ),
        )
