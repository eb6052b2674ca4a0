"""Every change of a job's status, as pure functions of the record applied by `JobStore.update`.

    queued --claim(_next)--> running --finish--> succeeded | failed | canceled
    queued --cancel--> canceled            running --cancel--> (flag; the worker stops it)
    queued --fail_unqueued--> failed       (the API could not publish its message)
    running (worker silent too long) --requeue--> queued

A worker owns a running job through the `run_id` it got when claiming it; a worker presumed
lost (its job was requeued and claimed again) can no longer finish it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from jobs.records import JobProgress, JobRecord, utcnow
from jobs.stores import Change, JobStore


def problem(code: str, title: str, detail: str, status: int = 422) -> dict[str, Any]:
    """A problem object (RFC 9457) stored as a failed job's `error`."""
    return {"type": f"urn:synflow:problem:{code}", "title": title, "status": status,
            "detail": detail, "code": code}  # fmt: skip


def transition(store: JobStore, job_id: str, change: Change) -> JobRecord | None:
    """Apply `change`; returns the new record, or None if the change did not apply."""
    changed: list[JobRecord] = []

    def apply(r: JobRecord) -> JobRecord | None:
        changed.clear()  # a retried transaction starts afresh
        new = change(r)
        if new is not None:
            changed.append(new)
        return new

    store.update(job_id, apply)
    return changed[0] if changed else None


def stale(record: JobRecord, timeout: float, now: datetime) -> bool:
    beat = record.heartbeat_at or record.started_at or record.created_at
    return now - beat > timedelta(seconds=timeout)


def request_cancel(store: JobStore, job_id: str) -> JobRecord | None:
    def change(r: JobRecord) -> JobRecord | None:
        if r.status == "queued":
            return r.model_copy(
                update={"status": "canceled", "finished_at": utcnow(), "cancel_requested": True}
            )
        if r.status == "running" and not r.cancel_requested:
            return r.model_copy(update={"cancel_requested": True})
        return None

    return store.update(job_id, change)


def fail_unqueued(store: JobStore, job_id: str, error: dict[str, Any]) -> JobRecord | None:
    """End a job whose message the API could not publish (the broker was down). No worker can
    have claimed it, so it is still queued; its upload is not kept (the caller deletes it)."""

    def change(r: JobRecord) -> JobRecord | None:
        if r.status != "queued":
            return None
        return r.model_copy(
            update={
                "status": "failed",
                "finished_at": utcnow(),
                "error": error,
                "input_held": False,
            }
        )

    return transition(store, job_id, change)


def _claim_change(worker: str, heartbeat_timeout: float, max_attempts: int) -> Change:
    def change(r: JobRecord) -> JobRecord | None:
        now = utcnow()
        if r.terminal or (r.status == "running" and not stale(r, heartbeat_timeout, now)):
            return None
        if r.cancel_requested:
            return r.model_copy(update={"status": "canceled", "finished_at": now})
        if r.attempts >= max_attempts:
            return r.model_copy(
                update={
                    "status": "failed",
                    "finished_at": now,
                    "error": problem(
                        "worker_lost",
                        "Worker lost",
                        f"the job was started {r.attempts} times and each time its worker "
                        "stopped before finishing it (killed or out of memory?); it is not "
                        "retried again",
                        status=500,
                    ),
                }
            )
        return r.model_copy(
            update={
                "status": "running",
                "started_at": now,
                "attempts": r.attempts + 1,
                "run_id": uuid.uuid4().hex,
                "worker": worker,
                "heartbeat_at": now,
            }
        )

    return change


def claim(
    store: JobStore, job_id: str, worker: str, heartbeat_timeout: float, max_attempts: int
) -> JobRecord | None:
    """Take this job for this worker. None: nothing to run (gone, finished, canceled, or running
    under a live worker, i.e. this message is a duplicate)."""
    change = _claim_change(worker, heartbeat_timeout, max_attempts)
    record = transition(store, job_id, change)
    return record if record is not None and record.status == "running" else None


def claim_next(
    store: JobStore,
    worker: str,
    heartbeat_timeout: float,
    max_attempts: int,
    max_running: int,
    ended: Callable[[JobRecord], None] | None = None,
) -> JobRecord | None:
    """Take the next job in fair order (jobs/scheduling.py) for this worker. A queued job
    that is canceled, or was started `max_attempts` times already, ends here instead (`ended`
    is told) and the next one is tried. None: no queued job may start now."""
    change = _claim_change(worker, heartbeat_timeout, max_attempts)
    while True:
        record = store.claim_next(change, max_running)
        if record is None or record.status == "queued":
            return None
        if record.status == "running":
            return record
        if ended is not None:
            ended(record)


def _owned(r: JobRecord, run_id: str) -> bool:
    return r.status == "running" and r.run_id == run_id


def heartbeat(
    store: JobStore, job_id: str, run_id: str, progress: JobProgress | None
) -> JobRecord | None:
    def change(r: JobRecord) -> JobRecord | None:
        if not _owned(r, run_id):
            return None
        update: dict[str, Any] = {"heartbeat_at": utcnow()}
        if progress is not None:
            update["progress"] = progress
        return r.model_copy(update=update)

    return transition(store, job_id, change)


def finish(
    store: JobStore,
    job_id: str,
    run_id: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    progress: JobProgress | None = None,
    artifact_bytes: int | None = None,
) -> JobRecord | None:
    """Record the outcome; returns None when this run no longer owns the job."""

    def change(r: JobRecord) -> JobRecord | None:
        if not _owned(r, run_id):
            return None
        update: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
        if result is not None:
            update["result"] = result
        if artifact_bytes is not None:
            update["artifact_bytes"] = artifact_bytes
        if progress is not None:
            update["progress"] = progress
        return r.model_copy(update=update)

    return transition(store, job_id, change)


def requeue_if_stale(store: JobStore, job_id: str, heartbeat_timeout: float) -> bool:
    """Put a running job whose worker went silent back to `queued`; True if it was."""

    def change(r: JobRecord) -> JobRecord | None:
        if r.status != "running" or not stale(r, heartbeat_timeout, utcnow()):
            return None
        return r.model_copy(update={"status": "queued", "run_id": None, "worker": None})

    return transition(store, job_id, change) is not None
