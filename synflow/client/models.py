"""What the service answers, typed: a job, its progress and callback, a page of jobs, a problem.

Every model accepts fields it does not know yet (`extra="allow"`), so that a client keeps
working against a newer service; the known fields are typed."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Status = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Problem(_Open):
    """An RFC 9457 problem document (`application/problem+json`)."""

    type: str = "about:blank"
    title: str = ""
    status: int | None = None
    detail: str | None = None


class Progress(_Open):
    iteration: int = 0
    iterations: int
    density: float = 1.0


class Callback(_Open):
    """The delivery of a job's webhook (`callback_url`): how it went so far."""

    status: str | None = None
    attempts: int = 0
    last_error: str | None = None


class JobLinks(_Open):
    self: str
    cancel: str
    artifacts: dict[str, str]


class Job(_Open):
    """The job object of the HTTP contract (`GET /jobs/{id}`)."""

    id: str
    status: Status
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    config: dict[str, Any] = {}
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: Problem | None = None
    cancel_requested: bool = False
    callback: Callback | None = None
    links: JobLinks

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class JobPage(_Open):
    items: list[Job]
    next_cursor: str | None = None
    links: dict[str, str] = {}
