"""Requeueing jobs of lost workers, and sweeping the scratch folders they left."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import timedelta

from jobs import lifecycle
from jobs.logs import JsonFormatter
from jobs.records import JobRecord, utcnow
from jobs.settings import Settings
from worker.context import WorkerContext
from worker.recovery import remove_orphan_scratch, requeue_stale_jobs


def make_ctx(tmp_path) -> WorkerContext:
    return WorkerContext(Settings(data_dir=tmp_path, heartbeat_timeout=5))


def running_job(ctx: WorkerContext) -> JobRecord:
    record = JobRecord(id=str(uuid.uuid4()), tenant="t", config={}, input_format="torchscript",
                       input_bytes=1)  # fmt: skip
    ctx.jobs.create(record)
    return lifecycle.claim(ctx.jobs, record.id, "w", 5, 3)


def test_only_silent_jobs_are_requeued_and_published_again(tmp_path, caplog):
    ctx = make_ctx(tmp_path)
    alive, lost = running_job(ctx), running_job(ctx)
    old = utcnow() - timedelta(seconds=60)
    ctx.jobs.update(lost.id, lambda r: r.model_copy(update={"heartbeat_at": old}))
    assert requeue_stale_jobs(ctx) == [lost.id]
    assert ctx.jobs.get(lost.id).status == "queued"
    assert ctx.jobs.get(alive.id).status == "running"
    queued = list((ctx.settings.broker_path / "queue").iterdir())
    assert len(queued) == 1 and queued[0].read_text().count(lost.id) >= 1
    # the JSON log line of the requeue names the job and its tenant (jobs/logs.py)
    (line,) = [r for r in caplog.records if "went silent" in r.getMessage()]
    fields = json.loads(JsonFormatter().format(line))
    assert fields["job_id"] == lost.id and fields["tenant"] == "t"


def test_orphan_scratch_is_removed_live_runs_are_kept(tmp_path):
    ctx = make_ctx(tmp_path)
    job = running_job(ctx)
    root = ctx.settings.scratch_path
    live = root / f"{job.id}-{job.run_id}"
    orphan = root / f"{job.id}-{uuid.uuid4().hex}"  # an earlier, killed run of the same job
    fresh = root / f"{uuid.uuid4()}-{uuid.uuid4().hex}"  # written to a moment ago
    for folder in (live, orphan, fresh):
        folder.mkdir(parents=True)
    past = time.time() - 600
    for folder in (live, orphan):
        os.utime(folder, (past, past))
    assert remove_orphan_scratch(ctx) == [orphan.name]
    assert live.exists() and fresh.exists() and not orphan.exists()
