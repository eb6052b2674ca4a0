"""The Celery task: one message = one job start. The message names a job id, but the worker
starts the next job in fair order (worker/runner.py `execute`); everything else is in the job
record."""

from __future__ import annotations

from jobs.queue import PRUNE_TASK
from worker.celery_app import app, context
from worker.runner import execute

#: a store that cannot be reached before the job is claimed: try again, then give up
RETRY_DELAYS = (1, 5, 15, 60)


@app.task(name=PRUNE_TASK, bind=True, max_retries=len(RETRY_DELAYS))
def prune(self, job_id: str) -> None:
    try:
        execute(job_id, context)
    except Exception as exc:
        delay = RETRY_DELAYS[min(self.request.retries, len(RETRY_DELAYS) - 1)]
        raise self.retry(exc=exc, countdown=delay) from exc
