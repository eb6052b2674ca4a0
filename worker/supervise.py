"""Start a job's child in its sandbox and watch it until it ends or must be stopped.

The parent polls the child and the job record every `poll_interval`: a cancel request, a
deleted job, a lost claim, the time limit or the scratch limit kill the child and everything
it started at once. Progress goes to the record at most every `progress_interval` (and a
heartbeat at least every quarter of `heartbeat_timeout`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jobs import lifecycle
from jobs.records import JobProgress, JobRecord
from worker import scratch as scratch_folder
from worker.child import OUTCOME_FILE, PROGRESS_FILE
from worker.confinement import launch_child, sandbox_policy
from worker.context import WorkerContext
from worker.outputs import read_json

log = logging.getLogger("worker")

#: the job's input as the child sees it: a link in scratch (job.json names no host path)
INPUT_NAME = "input"
CALIBRATION_NAME = "calibration"


@dataclass
class ChildRun:
    returncode: int | None
    exit: str  # how the child ended, in words
    #: canceled | deleted | lost | timeout | scratch_limit, or None if it ended by itself
    stopped: str | None
    outcome: dict[str, Any] | None
    progress: JobProgress | None
    limit_detail: str | None = None  # what the job overran, when stopped for scratch_limit


def read_progress(scratch: Path) -> JobProgress | None:
    data = read_json(scratch, PROGRESS_FILE)
    try:
        return JobProgress.model_validate(data) if data else None
    except ValidationError:
        return None


def supervise(
    record: JobRecord, scratch: Path, ctx: WorkerContext, uid: int | None = None
) -> ChildRun:
    settings = ctx.settings
    input_path = ctx.artifacts.input_path(record.id)
    (scratch / INPUT_NAME).symlink_to(input_path)
    calibration_path = ctx.artifacts.calibration_path(record.id)
    if calibration_path.exists():
        (scratch / CALIBRATION_NAME).symlink_to(calibration_path)
    else:
        calibration_path = None
    # paths relative to the child's working folder, scratch: no host path in the spec
    spec = {
        "job_id": record.id,
        "input": INPUT_NAME,
        "out": "out",
        "scratch": ".",
        "config": record.config,
        "device": settings.device,
        "precision": settings.precision,
        "limits": settings.input_limits().to_dict(),
        "parent_pid": None,  # the sandbox kills the child when this thread dies
    }
    if calibration_path is not None:
        spec["calibration"] = CALIBRATION_NAME
    spec_path = scratch / "job.json"
    spec_path.write_text(json.dumps(spec))
    policy = sandbox_policy(settings, scratch, input_path, uid, calibration_path)
    proc = launch_child(spec_path, policy)
    log.info("job %s: sandbox layers %s", record.id, ", ".join(proc.layers))
    started = last_beat = time.monotonic()
    beat_every = settings.heartbeat_timeout / 4
    sent: JobProgress | None = None
    stopped = limit_detail = None
    try:
        while True:
            try:
                proc.wait(timeout=settings.poll_interval)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now - started > settings.job_time_limit:
                stopped = "timeout"
            else:
                try:
                    current = ctx.jobs.get(record.id)
                except Exception:
                    log.exception("job %s: cannot read its record; child keeps running", record.id)
                    continue
                if current is None:
                    stopped = "deleted"
                elif current.status != "running" or current.run_id != record.run_id:
                    stopped = "lost"
                elif current.cancel_requested:
                    stopped = "canceled"
                else:
                    limit_detail = scratch_folder.over_limit(
                        scratch, settings.scratch_max_files, settings.scratch_max_bytes
                    )
                    stopped = "scratch_limit" if limit_detail else None
            if stopped:
                proc.kill()
                break
            progress = read_progress(scratch)
            changed = progress is not None and progress != sent
            if (changed and now - last_beat >= settings.progress_interval) or (
                now - last_beat >= beat_every
            ):
                try:
                    lifecycle.heartbeat(ctx.jobs, record.id, record.run_id or "", progress)
                    sent, last_beat = progress, now
                except Exception:
                    log.exception("job %s: cannot write progress", record.id)
    except BaseException:  # e.g. Celery's soft time limit, or the worker shutting down
        proc.kill()
        raise
    if stopped is None and proc.describe_exit().startswith("wall-clock limit"):
        stopped = "timeout"  # the sandbox's own clock fired before this loop looked
    return ChildRun(
        returncode=proc.returncode,
        exit=proc.describe_exit(),
        stopped=stopped,
        outcome=read_json(scratch, OUTCOME_FILE),
        progress=read_progress(scratch),
        limit_detail=limit_detail,
    )
