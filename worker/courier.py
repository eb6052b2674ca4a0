"""The worker's courier thread: every `webhook_poll_interval` it delivers the webhooks that are
due (jobs/webhooks/courier.py), whichever worker ran the job, and also those of jobs that never
ran (canceled while queued through the API). It runs in the Celery main process beside the
sweeper, never in a job's sandbox, so a slow receiver holds up no job."""

from __future__ import annotations

import logging
import threading

from jobs.webhooks.courier import deliver_due
from worker.context import WorkerContext

log = logging.getLogger("worker")


def start_courier(ctx: WorkerContext) -> threading.Thread:
    def loop() -> None:
        while True:
            try:
                deliver_due(ctx.jobs, ctx.settings)
            except Exception:
                log.exception("delivering webhooks failed; retrying")
            stop.wait(ctx.settings.webhook_poll_interval)

    stop = threading.Event()
    thread = threading.Thread(target=loop, name="synflow-courier", daemon=True)
    thread.start()
    return thread
