"""What the API returns besides the job object (jobs/job_object.py): a page of jobs, and RFC 9457
problem details."""

from __future__ import annotations

from pydantic import BaseModel, Field

from jobs.job_object import JobOut


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
