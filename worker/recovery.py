"""Requeue jobs whose worker was lost (killed, machine gone) while running them.

A running job's worker writes a heartbeat to the record; a job silent for longer than
`heartbeat_timeout` goes back to `queued` and is published again. Duplicate messages are
harmless: `lifecycle.claim` lets only one run own a job.
"""

from __future__ import annotations

import logging
import threading

from service import lifecycle
from worker.context import WorkerContext

log = logging.getLogger("worker")


def requeue_stale_jobs(ctx: WorkerContext) -> list[str]:
    moved = []
    for record in ctx.jobs.running():
        if lifecycle.requeue_if_stale(ctx.jobs, record.id, ctx.settings.heartbeat_timeout):
            ctx.queue.enqueue(record.id)
            moved.append(record.id)
            log.warning("job %s: its worker %s went silent; requeued", record.id, record.worker)
    return moved


def start_sweeper(ctx: WorkerContext) -> threading.Thread:
    interval = max(ctx.settings.heartbeat_timeout / 2, 0.5)

    def loop() -> None:
        while True:
            try:
                requeue_stale_jobs(ctx)
            except Exception:
                log.exception("sweeping for lost jobs failed; retrying")
            stop.wait(interval)

    stop = threading.Event()
    thread = threading.Thread(target=loop, name="synflow-sweeper", daemon=True)
    thread.start()
    return thread
