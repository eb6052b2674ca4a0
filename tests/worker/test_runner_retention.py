"""The runner with a real child process: a job's upload is deleted when it ends (kept with
`keep_inputs`), its artifact bytes are recorded, and a job's end wakes a worker for the jobs
that its tenant's cap held back (the sweep too, when jobs wait and none runs)."""

from __future__ import annotations

from jobs import lifecycle
from tests.worker.test_runner import context, model_file, new_job  # noqa: F401 (fixture)
from worker.recovery import wake_if_stalled
from worker.runner import execute


def queued_messages(ctx) -> list[str]:
    folder = ctx.settings.broker_path / "queue"  # made when the first message is sent
    return [p.read_text() for p in folder.iterdir()] if folder.is_dir() else []


def test_input_deleted_when_the_job_ends_and_its_bytes_recorded(tmp_path, model_file):  # noqa: F811
    ctx = context(tmp_path)
    job_id = new_job(ctx, model_file, sparsity=0.5, iterations=2)
    assert execute(job_id, ctx) == "succeeded"
    record = ctx.jobs.get(job_id)
    assert not ctx.artifacts.input_path(job_id).exists() and not record.input_held
    published = ctx.artifacts.artifacts_dir(job_id)
    assert record.artifact_bytes == sum(p.stat().st_size for p in published.iterdir()) > 0
    usage = ctx.jobs.usage("t")
    assert (usage.input_bytes, usage.artifact_bytes) == (0, record.artifact_bytes)

    failing = new_job(ctx, model_file, sparsity=0.5, iterations=2)
    ctx.artifacts.input_path(failing).write_bytes(b"\x80\x04 a pickle")
    assert execute(failing, ctx) == "failed"
    assert not ctx.artifacts.input_path(failing).exists()  # a failed job's too


def test_keep_inputs_keeps_them(tmp_path, model_file):  # noqa: F811
    ctx = context(tmp_path, keep_inputs=True)
    job_id = new_job(ctx, model_file, sparsity=0.5, iterations=2)
    assert execute(job_id, ctx) == "succeeded"
    assert ctx.artifacts.input_path(job_id).is_file() and ctx.jobs.get(job_id).input_held


def test_a_jobs_end_wakes_a_worker_while_jobs_wait(tmp_path, model_file):  # noqa: F811
    ctx = context(tmp_path, tenant_max_running=1)
    first = new_job(ctx, model_file, sparsity=0.5, iterations=2)
    second = new_job(ctx, model_file, sparsity=0.5, iterations=2)
    assert execute(second, ctx) == "succeeded"  # a message is a wake-up: the oldest runs
    assert ctx.jobs.get(first).status == "succeeded" and ctx.jobs.get(second).status == "queued"
    assert len(queued_messages(ctx)) == 1  # the second job waits: a worker is woken for it
    assert execute(first, ctx) == "succeeded"
    assert ctx.jobs.get(second).status == "succeeded"
    assert len(queued_messages(ctx)) == 1  # nothing waits any more: no further wake-up


def test_the_sweep_wakes_a_worker_only_when_jobs_wait_and_none_runs(tmp_path, model_file):  # noqa: F811
    ctx = context(tmp_path)
    assert not wake_if_stalled(ctx) and queued_messages(ctx) == []  # nothing queued
    first = new_job(ctx, model_file, sparsity=0.5, iterations=2)
    new_job(ctx, model_file, sparsity=0.5, iterations=2)
    record = lifecycle.claim_next(ctx.jobs, "w", 60, 3, 1)
    assert record.id == first
    assert not wake_if_stalled(ctx)  # one runs: its end wakes a worker
    lifecycle.finish(ctx.jobs, first, record.run_id, "succeeded")  # ...but its worker died
    assert wake_if_stalled(ctx)
    assert len(queued_messages(ctx)) == 1
