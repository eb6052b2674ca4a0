"""Run one job: claim the next in fair order, start the child, watch it, publish, record it.

The parent never loads a model: the child runs in the sandbox of `worker.sandbox` (no network,
scratch its only writable place, its own uid, rlimits; docs/sandbox.md), and everything it
leaves in scratch is read without following links and checked before it is published. The
parent polls the child and the job record every `poll_interval`: a cancel request, a deleted
job, a lost claim or the time limit kill the child and everything it started at once.
Progress goes to the record at most every `progress_interval` (and a heartbeat at least every
quarter of `heartbeat_timeout`). A child that crashes (segfault, OOM kill) fails its
job with the reason; the worker carries on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service import lifecycle, retention
from service.logs import log_scope
from service.schemas import JobProgress, JobRecord
from service.settings import Settings
from service.stores.artifacts import ARTIFACT_FILES, DRAWN_FILES
from service.stores.private import DIR_MODE, private_dir
from synflow.io.formats import model_file
from worker import scratch as scratch_folder
from worker.child import OUTCOME_FILE, PROGRESS_FILE
from worker.context import WorkerContext
from worker.redaction import redact
from worker.sandbox import (
    SandboxedProcess,
    SandboxLimits,
    SandboxPolicy,
    read_scratch_file,
    start,
)
from worker.slots import NoFreeSlot, UidSlots

log = logging.getLogger("worker")

MAX_SAFETENSORS_HEADER = 100 << 20
MAX_CONTROL_FILE = 1 << 20  # progress.json, outcome.json
MAX_REPORT = 64 << 20
CHILD_LOG = "child.log"  # the child's stdout and stderr, together
#: the job's input as the child sees it: a link in scratch (job.json names no host path)
INPUT_NAME = "input"
CODE = re.compile(r"[a-z_]{1,64}")  # an error code from the child, as the engine names them


class InvalidOutput(Exception):
    pass


@dataclass
class ChildRun:
    returncode: int | None
    exit: str  # how the child ended, in words
    #: canceled | deleted | lost | timeout | scratch_limit, or None if it ended by itself
    stopped: str | None
    outcome: dict[str, Any] | None
    progress: JobProgress | None
    limit_detail: str | None = None  # what the job overran, when stopped for scratch_limit


def uid_slots(settings: Settings) -> UidSlots:
    return UidSlots(
        settings.sandbox_slot_dir, settings.sandbox_uid_base, settings.sandbox_uid_slots
    )


def sandbox_policy(
    settings: Settings, scratch: Path, input_path: Path, uid: int | None = None
) -> SandboxPolicy:
    """The job's sandbox. `uid`: the slot leased for it (worker/slots.py; only a root worker
    uses it); it reads only its input, and its view hides the service's data folders."""
    uid = settings.sandbox_uid_base if uid is None else uid
    return SandboxPolicy(
        scratch=scratch,
        uid=uid,
        gid=uid,
        read_only_paths=(input_path,),
        granted_files=(input_path,),
        hidden_paths=tuple(
            {settings.data_dir.resolve(), settings.artifacts_path, settings.scratch_path}
        ),
        limits=SandboxLimits(
            memory_bytes=settings.sandbox_memory_bytes,
            cpu_seconds=settings.cpu_seconds,
            wall_seconds=settings.job_time_limit,
            max_processes=settings.sandbox_max_processes,
            max_file_bytes=settings.sandbox_max_file_bytes,
            max_open_files=settings.sandbox_max_open_files,
        ),
        stdout_name=CHILD_LOG,
        stderr_name=CHILD_LOG,
        required_layers=settings.required_layers,
    )


def launch_child(spec_path: Path, policy: SandboxPolicy) -> SandboxedProcess:
    """The one place the child process starts: in the sandbox (docs/sandbox.md). Call it from
    the thread that waits for the child: the child dies with that thread."""
    return start([sys.executable, "-m", "worker.child", str(spec_path)], policy)


def read_json(scratch: Path, name: str, max_bytes: int = MAX_CONTROL_FILE) -> dict[str, Any] | None:
    """A small JSON file the child wrote in scratch: never through a link, never more than
    `max_bytes`; None when missing or not a JSON object."""
    try:
        data = read_scratch_file(scratch, name, max_bytes=max_bytes)
    except (OSError, ValueError):
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


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
    spec_path = scratch / "job.json"
    spec_path.write_text(json.dumps(spec))
    proc = launch_child(spec_path, sandbox_policy(settings, scratch, input_path, uid))
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


def safetensors_header(data: bytes, name: str) -> dict[str, Any]:
    """The JSON header of a safetensors file's bytes (no tensor is loaded)."""
    if len(data) < 8:
        raise InvalidOutput(f"{name} is truncated")
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_SAFETENSORS_HEADER or 8 + size > len(data):
        raise InvalidOutput(f"{name} has an implausible header size")
    header = json.loads(data[8 : 8 + size])
    if not isinstance(header, dict):
        raise InvalidOutput(f"{name} has no valid header")
    header.pop("__metadata__", None)
    return header


def check_artifacts(scratch: Path, fmt: str) -> tuple[list[str], dict[str, Any]]:
    """The artifact files, after checking they are plain files (no links: the child owned
    scratch and could have planted them), complete, and agree with each other."""
    out = scratch / "out"
    info = os.lstat(out) if os.path.lexists(out) else None
    if info is None or not stat.S_ISDIR(info.st_mode):
        raise InvalidOutput("the pruning process did not write its output folder")
    files = [*ARTIFACT_FILES.values(), model_file(fmt)]
    for name in files:
        try:
            info = os.lstat(out / name)
        except FileNotFoundError:
            raise InvalidOutput(f"the pruning process did not write {name}") from None
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0 or info.st_nlink != 1:
            raise InvalidOutput(f"{name} is not a plain, non-empty file")
    report = read_json(scratch, f"out/{ARTIFACT_FILES['report']}", MAX_REPORT)
    if report is None or not isinstance(report.get("layers"), list):
        raise InvalidOutput("report.json is not a valid report")
    masks = safetensors_header(_head(out / ARTIFACT_FILES["masks"]), ARTIFACT_FILES["masks"])
    layers = {row["name"]: row for row in report["layers"]}
    if set(masks) != set(layers):
        raise InvalidOutput("masks.safetensors and report.json name different tensors")
    for name, info in masks.items():
        if info.get("dtype") != "BOOL" or info.get("shape") != layers[name]["shape"]:
            raise InvalidOutput(f"mask {name} has the wrong dtype or shape")
    safetensors_header(_head(out / ARTIFACT_FILES["weights"]), ARTIFACT_FILES["weights"])
    return files, report


def draw_artifacts(report: dict[str, Any]) -> dict[str, bytes]:
    """The files drawn from the checked report, here outside the sandbox (it reads only the
    report's JSON); a report that cannot be drawn is invalid output (ReportError)."""
    from synflow.plot import report_png

    return {DRAWN_FILES["report.png"]: report_png(report)}


def _head(path: Path) -> bytes:
    """The safetensors header bytes of an output file (already checked to be a plain file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            return raw
        (size,) = struct.unpack("<Q", raw)
        return raw + fh.read(min(size, MAX_SAFETENSORS_HEADER + 1))


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The job's `result`: totals, FLOPs and the per-layer table of the report."""
    totals = report["totals"]
    return {
        "sparsity": totals["sparsity"],
        "density": totals["density"],
        "prunable": totals["prunable"],
        "kept": totals["kept"],
        "parameters": totals["parameters"],
        "parameters_kept": totals["parameters_kept"],
        "flops": report.get("flops"),
        "layers": [
            {k: row.get(k) for k in ("name", "layer_type", "shape", "total", "kept", "density")}
            for row in report["layers"]
        ],
        "warnings": report.get("warnings", []),
        "device": report.get("device"),
        "precision": report.get("precision"),
        "seconds": report.get("timing", {}).get("wall_seconds"),
    }


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


def execute(job_id: str, ctx: WorkerContext) -> str | None:
    """Run the next job in fair order (service/scheduling.py) if one may start; returns its
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
            return _conclude(ctx, record, run, scratch)
        except Exception as exc:
            from celery.exceptions import SoftTimeLimitExceeded

            if isinstance(exc, SoftTimeLimitExceeded):
                return _fail_timeout(ctx, record)
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


def _fail_timeout(ctx: WorkerContext, record: JobRecord) -> str:
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


def _conclude(ctx: WorkerContext, record: JobRecord, run: ChildRun, scratch: Path) -> str | None:
    job_id, run_id = record.id, record.run_id or ""
    if run.stopped in ("deleted", "lost"):
        log.info("job %s: stopped (%s)", job_id, run.stopped)
        return None
    if run.stopped == "canceled":
        lifecycle.finish(ctx.jobs, job_id, run_id, "canceled", progress=run.progress)
        log.info("job %s: canceled", job_id)
        return "canceled"
    if run.stopped == "timeout":
        return _fail_timeout(ctx, record)
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
