"""The worker's periodic sweep: requeue jobs whose worker was lost (killed, machine gone) while
running them, remove the scratch folders such workers left, expire finished jobs, and wake a
worker when jobs are queued but none runs.

A running job's worker writes a heartbeat to the record; a job silent for longer than
`heartbeat_timeout` goes back to `queued` and is published again. Duplicate messages are
harmless: `lifecycle.claim_next` lets only one run own a job. Jobs that ended more than
`retention` ago are deleted (jobs/retention.py); every worker sweeps, and deleting twice
is harmless.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time

from jobs import lifecycle, retention
from worker.context import WorkerContext

log = logging.getLogger("worker")


def requeue_stale_jobs(ctx: WorkerContext) -> list[str]:
    moved = []
    for record in ctx.jobs.running():
        if lifecycle.requeue_if_stale(ctx.jobs, record.id, ctx.settings.heartbeat_timeout):
            ctx.queue.enqueue(record.id)
            moved.append(record.id)
            log.warning(
                "job %s: its worker %s went silent; requeued", record.id, record.worker,
                extra={"job_id": record.id, "tenant": record.tenant},  # JSON log fields
            )  # fmt: skip
    return moved


def wake_if_stalled(ctx: WorkerContext) -> bool:
    """Jobs queued while none runs anywhere: publish a wake-up. Covers a worker lost between
    ending a job and waking a worker for the jobs its tenant's cap held back (whose messages
    were used up); at most one message per sweep, and only while nothing runs."""
    usage = ctx.jobs.usage_by_tenant().values()
    if any(u.queued for u in usage) and not any(u.running for u in usage):
        ctx.queue.wake()
        return True
    return False


def remove_orphan_scratch(ctx: WorkerContext) -> list[str]:
    """Delete scratch folders (`<job id>-<run id>`) that no live run owns: left behind by a
    killed worker. Folders of runs still in progress, here or in another worker, are kept."""
    removed = []
    root = ctx.settings.scratch_path
    if not root.is_dir():
        return removed
    for folder in root.iterdir():
        job_id, _, run_id = folder.name.rpartition("-")
        record = ctx.jobs.get(job_id) if len(job_id) == 36 else None
        if record is not None and record.status == "running" and record.run_id == run_id:
            continue
        if time.time() - folder.stat().st_mtime < ctx.settings.heartbeat_timeout:
            continue  # written to lately: leave it until it has been silent as long as a job
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


def start_sweeper(ctx: WorkerContext) -> threading.Thread:
    interval = max(ctx.settings.heartbeat_timeout / 2, 0.5)

    def loop() -> None:
        while True:
            try:
                requeue_stale_jobs(ctx)
                remove_orphan_scratch(ctx)
                retention.expire_finished(ctx.jobs, ctx.artifacts, ctx.settings.retention)
                wake_if_stalled(ctx)
            except Exception:
                log.exception("sweeping for lost jobs failed; retrying")
            stop.wait(interval)

    stop = threading.Event()
    thread = threading.Thread(target=loop, name="synflow-sweeper", daemon=True)
    thread.start()
    return thread
