"""Turn how a job's child ended into the job's outcome: canceled, failed with a problem the
job's owner can act on (host paths redacted), or succeeded with its artifacts published.
With the runner's own failure paths (worker/runner.py), these are the only calls to
`lifecycle.finish`: nothing else ends a job that a worker claimed."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from jobs import lifecycle
from jobs.records import JobRecord
from worker.confinement import CHILD_LOG
from worker.context import WorkerContext
from worker.outputs import InvalidOutput, check_artifacts, draw_artifacts, summarize
from worker.redaction import redact
from worker.sandbox import read_scratch_file
from worker.supervise import ChildRun

log = logging.getLogger("worker")

CODE = re.compile(r"[a-z_]{1,64}")  # an error code from the child, as the engine names them


def crash_problem(run: ChildRun, places: dict[str, Path] | None = None) -> dict[str, Any]:
    how = redact(run.exit, places)
    if run.exit.startswith("sandbox setup failed"):  # the host, not the job: fail closed
        return lifecycle.problem(
            "sandbox_unavailable", "Sandbox unavailable",
            f"the worker could not start the job's sandbox ({how}); the job was not run. "
            "This is a problem of the service's deployment, not of the request", status=503,
        )  # fmt: skip
    if run.returncode is not None and run.returncode < 0 and "from outside" in run.exit:
        detail = f"the pruning process was {how}; the job itself is not known to be at fault: "
        detail += "submit it again"
    elif run.returncode is not None and run.returncode < 0:
        detail = f"the pruning process was {how}; the model may be too large for this "
        detail += "worker, or it crashed the runtime"
    else:
        detail = f"the pruning process {how} without reporting a result"
    return lifecycle.problem("worker_crash", "Pruning process crashed", detail, status=500)


def fail_timeout(ctx: WorkerContext, record: JobRecord) -> str:
    limit = ctx.settings.job_time_limit
    error = lifecycle.problem(
        "time_limit",
        "Time limit exceeded",
        f"the job ran longer than {limit:g} s and was stopped; use fewer iterations or a "
        "smaller input_shape",
        status=422,
    )
    lifecycle.finish(ctx.jobs, record.id, record.run_id or "", "failed", error=error)
    return "failed"


def conclude(ctx: WorkerContext, record: JobRecord, run: ChildRun, scratch: Path) -> str | None:
    job_id, run_id = record.id, record.run_id or ""
    if run.stopped in ("deleted", "lost"):
        log.info("job %s: stopped (%s)", job_id, run.stopped)
        return None
    if run.stopped == "canceled":
        lifecycle.finish(ctx.jobs, job_id, run_id, "canceled", progress=run.progress)
        log.info("job %s: canceled", job_id)
        return "canceled"
    if run.stopped == "timeout":
        return fail_timeout(ctx, record)
    if run.stopped == "scratch_limit":
        detail = f"{run.limit_detail}; write fewer files, or ask for higher limits"
        error = lifecycle.problem("scratch_limit", "Scratch limit exceeded", detail)
        lifecycle.finish(ctx.jobs, job_id, run_id, "failed", error=error, progress=run.progress)
        return "failed"
    places = _places(ctx, scratch)
    outcome = run.outcome
    if outcome is None:
        try:
            tail = read_scratch_file(scratch, CHILD_LOG, tail=2000).decode(errors="replace")
        except (OSError, ValueError):
            tail = "(no log)"
        log.error("job %s: child ended with %s; log tail:\n%s", job_id, run.returncode, tail)
        lifecycle.finish(ctx.jobs, job_id, run_id, "failed", error=crash_problem(run, places))
        return "failed"
    if outcome.get("ok") is not True:
        code, message = outcome.get("code"), outcome.get("message")
        if not isinstance(code, str) or not CODE.fullmatch(code):
            code = "engine_error"
        if not isinstance(message, str) or not message:
            message = "pruning failed without a message"
        error = lifecycle.problem(code, "Pruning failed", redact(message, places))
        lifecycle.finish(ctx.jobs, job_id, run_id, "failed", error=error, progress=run.progress)
        return "failed"
    try:
        files, report = check_artifacts(scratch, record.input_format)
        drawn = draw_artifacts(report)
    except (InvalidOutput, OSError, ValueError, KeyError) as exc:
        detail = redact(str(exc), places)
        error = lifecycle.problem("invalid_output", "Invalid output", detail, status=500)
        lifecycle.finish(ctx.jobs, job_id, run_id, "failed", error=error)
        return "failed"
    current = ctx.jobs.get(job_id)
    if current is None or current.run_id != run_id:
        return None
    if current.cancel_requested:
        lifecycle.finish(ctx.jobs, job_id, run_id, "canceled", progress=run.progress)
        return "canceled"
    published = ctx.artifacts.publish(job_id, scratch / "out", files, drawn)
    size = sum((published / name).stat().st_size for name in [*files, *drawn])
    done = lifecycle.finish(
        ctx.jobs, job_id, run_id, "succeeded", result=summarize(report), progress=run.progress,
        artifact_bytes=size,
    )  # fmt: skip
    if done is None:
        if ctx.jobs.get(job_id) is None:  # deleted while publishing: leave nothing behind
            ctx.artifacts.delete(job_id)
        return None
    log.info("job %s: succeeded", job_id)
    return "succeeded"


def _places(ctx: WorkerContext, scratch: Path) -> dict[str, Path]:
    """Folders named, not spelled out, in what the job's owner reads (worker/redaction.py)."""
    settings = ctx.settings
    return {
        "scratch": scratch,
        "artifacts": settings.artifacts_path,
        "scratch-root": settings.scratch_path,
        "data": settings.data_dir.resolve(),
        "home": Path.home(),
    }
