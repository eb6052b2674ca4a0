"""Run one job: claim the next in fair order, supervise its sandboxed child, conclude it.

The parent never loads a model: the child runs in the sandbox of `worker.sandbox` (no network,
scratch its only writable place, its own uid, rlimits; docs/sandbox.md; worker/confinement.py),
watched by worker/supervise.py; what it leaves is checked by worker/outputs.py before
worker/conclude.py publishes it and records the outcome. A child that crashes (segfault, OOM
kill) fails its job with the reason; the worker carries on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from jobs import lifecycle, retention
from jobs.logs import log_scope
from jobs.records import JobRecord
from jobs.stores.private import DIR_MODE, private_dir
from worker import scratch as scratch_folder
from worker.conclude import conclude, fail_timeout
from worker.confinement import uid_slots
from worker.context import WorkerContext
from worker.slots import NoFreeSlot
from worker.supervise import ChildRun, supervise

log = logging.getLogger("worker")


def execute(job_id: str, ctx: WorkerContext) -> str | None:
    """Run the next job in fair order (jobs/scheduling.py) if one may start; returns its
    final status (None: nothing run here). The message's `job_id` is only a wake-up: every
    message lets one job start, whichever tenant's turn it is."""
    settings = ctx.settings

    def ended(record: JobRecord) -> None:
        retention.release_input(ctx.jobs, ctx.artifacts, record.id, settings.keep_inputs)

    record = lifecycle.claim_next(
        ctx.jobs,
        ctx.name,
        settings.heartbeat_timeout,
        settings.max_attempts,
        settings.tenant_max_running,
        ended=ended,
    )
    if record is None or record.run_id is None:
        log.debug("message %s: no queued job may start now", job_id)
        return None
    with log_scope(job_id=record.id, tenant=record.tenant):  # on every line of the job
        try:
            return _run(record, ctx)
        finally:
            try:
                ended(record)
            except Exception:  # the file stays until the job expires; the job's outcome stands
                log.exception("job %s: could not delete its upload", record.id)
            wake_for_waiting_jobs(ctx, record.id)


def wake_for_waiting_jobs(ctx: WorkerContext, ended_id: str) -> None:
    """A job's end frees a slot of its tenant: publish a wake-up while jobs wait, since the
    messages of jobs that were held back by their tenant's cap were used up meanwhile."""
    try:
        if any(u.queued for u in ctx.jobs.usage_by_tenant().values()):
            ctx.queue.wake()
    except Exception:
        log.exception("job %s: could not wake a worker for the queued jobs", ended_id)


def _run(record: JobRecord, ctx: WorkerContext) -> str | None:
    settings = ctx.settings
    job_id, run_id = record.id, record.run_id or ""
    log.info("job %s: started (attempt %d, tenant %s)", job_id, record.attempts, record.tenant)
    scratch = private_dir(settings.scratch_path) / f"{job_id}-{run_id}"
    scratch.mkdir(mode=DIR_MODE, exist_ok=True)
    try:
        try:
            run = _run_in_slot(record, scratch, ctx)
            if run is None:
                return "failed"
            return conclude(ctx, record, run, scratch)
        except Exception as exc:
            from celery.exceptions import SoftTimeLimitExceeded

            if isinstance(exc, SoftTimeLimitExceeded):
                return fail_timeout(ctx, record)
            log.exception("job %s: the worker failed while running it", job_id)
            error = lifecycle.problem(
                "internal_error", "Internal error", "the worker failed while running this job; "
                "this is a bug in the service, not in the request", status=500,
            )  # fmt: skip
            lifecycle.finish(ctx.jobs, job_id, run_id, "failed", error=error)
            return "failed"
    finally:
        scratch_folder.discard(scratch)  # in the background: the next job need not wait


def _run_in_slot(record: JobRecord, scratch: Path, ctx: WorkerContext) -> ChildRun | None:
    """Supervise the job under a uid no other job on this host holds (a root worker only:
    otherwise the job keeps the worker's uid and there is nothing to lease)."""
    settings = ctx.settings
    if os.geteuid() != 0:
        return supervise(record, scratch, ctx)
    try:
        with uid_slots(settings).lease(timeout=settings.heartbeat_timeout / 2) as uid:
            return supervise(record, scratch, ctx, uid)
    except NoFreeSlot as exc:
        error = lifecycle.problem("no_free_slot", "No free job slot", str(exc), status=503)
        lifecycle.finish(ctx.jobs, record.id, record.run_id or "", "failed", error=error)
        return None
