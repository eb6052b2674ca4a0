"""The Celery task: one message = one job id; everything else is in the job record."""

from __future__ import annotations

from service.queue import PRUNE_TASK
from worker.celery_app import app, context
from worker.runner import execute


@app.task(name=PRUNE_TASK)
def prune(job_id: str) -> None:
    execute(job_id, context)
