"""`celery -A worker.celery_app worker`: the Celery app, configured from the same `Settings`
as the API (jobs/queue.py), plus the prune task, the sweeper that requeues jobs whose
worker was lost, and the courier that delivers webhooks."""

from __future__ import annotations

import logging
import os

from celery.signals import setup_logging, worker_ready

from jobs.queue import make_celery
from jobs.settings import Settings
from worker.context import WorkerContext
from worker.lifeline import PARENT_PID_ENV, die_with_parent

if PARENT_PID_ENV in os.environ:  # the embedded worker of `synflow serve`
    die_with_parent(int(os.environ[PARENT_PID_ENV]))

settings = Settings()
app = make_celery(settings, main="worker")
app.conf.include = ["worker.tasks"]
context = WorkerContext(settings)

log = logging.getLogger("worker")

if settings.log_format == "json":

    @setup_logging.connect
    def _json_logging(loglevel=None, **_: object) -> None:
        """Celery's lines and ours as JSON (a receiver here replaces Celery's own setup)."""
        from jobs.logs import configure_json_logging

        configure_json_logging(settings.log_level)


@worker_ready.connect
def _start_threads(**_: object) -> None:
    from worker.courier import start_courier
    from worker.recovery import start_sweeper

    try:
        context.jobs.ensure_indexes()
    except Exception:  # the store is down: the next start tries again
        log.exception("could not check the job store's indexes")
    start_sweeper(context)
    start_courier(context)
