"""The worker's runner with a real child process: crashes, engine errors and time limits fail
the job with a clear reason and leave the worker able to run the next job."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from jobs.records import JobRecord
from jobs.settings import Settings
from synflow.config import PruneConfig
from tests.service.harness import SANDBOX_UID_BASE, small_cnn, wait_until, write_model
from worker.confinement import sandbox_policy
from worker.context import WorkerContext
from worker.outputs import InvalidOutput, check_artifacts, read_json
from worker.runner import execute
from worker.supervise import read_progress


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("m") / "small.pt", small_cnn())


def context(tmp_path: Path, **settings) -> WorkerContext:
    settings.setdefault("sandbox_uid_base", SANDBOX_UID_BASE)
    return WorkerContext(Settings(data_dir=tmp_path, device="cpu", poll_interval=0.05, **settings))


def new_job(ctx: WorkerContext, model: Path, **config) -> str:
    job_id = str(uuid.uuid4())
    target = ctx.artifacts.input_path(job_id)
    target.parent.mkdir(parents=True)
    shutil.copy(model, target)
    cfg = PruneConfig(input_shape=(1, 3, 16, 16), **config)
    ctx.jobs.create(JobRecord(id=job_id, tenant="t", config=cfg.normalized(),
                              input_format="torchscript", input_bytes=1))  # fmt: skip
    return job_id


def child_pid(job_id: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"worker.child" in cmdline and job_id.encode() in cmdline:
            return int(entry.name)
    return None


def test_a_crashing_child_fails_the_job_and_the_worker_carries_on(tmp_path, model_file):
    ctx = context(tmp_path)
    job_id = new_job(ctx, model_file, sparsity=0.9, iterations=10000)
    outcome: list[str | None] = []
    thread = threading.Thread(target=lambda: outcome.append(execute(job_id, ctx)))
    thread.start()
    pid = wait_until(lambda: child_pid(job_id), 30, "child never started")
    wait_until(lambda: ctx.jobs.get(job_id).progress or None, 30, "no progress")
    os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does, but here someone else
    thread.join(30)
    assert outcome == ["failed"]
    record = ctx.jobs.get(job_id)
    assert record.error["code"] == "worker_crash"
    # no OOM kill happened: the detail must not blame memory
    assert "SIGKILL (from outside the sandbox" in record.error["detail"], record.error
    assert "too large" not in record.error["detail"]
    assert not ctx.artifacts.artifacts_dir(job_id).exists()
    scratch_left = ctx.settings.scratch_path
    wait_until(lambda: [p.name for p in scratch_left.iterdir()] in ([], [".trash"]), 10, "scratch")
    wait_until(lambda: not any((scratch_left / ".trash").iterdir()), 10, "scratch not deleted")

    after = new_job(ctx, model_file, sparsity=0.5, iterations=3)
    assert execute(after, ctx) == "succeeded"
    assert sorted(p.name for p in ctx.artifacts.artifacts_dir(after).iterdir()) == [
        "masks.safetensors", "model.pt", "report.json", "report.png", "weights.safetensors"
    ]  # fmt: skip


def test_engine_errors_fail_the_job_with_the_engines_message(tmp_path, model_file):
    ctx = context(tmp_path)
    job_id = str(uuid.uuid4())
    bad = ctx.artifacts.input_path(job_id)
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x80\x04not a model")  # a pickle: refused by the engine, never loaded
    config = PruneConfig(sparsity=0.5, input_shape=(1, 3, 16, 16)).normalized()
    record = JobRecord(id=job_id, tenant="t", config=config, input_format="torchscript",
                       input_bytes=1)  # fmt: skip
    ctx.jobs.create(record)
    assert execute(job_id, ctx) == "failed"
    error = ctx.jobs.get(job_id).error
    assert error["code"] == "invalid_model" and "pickle" in error["detail"]

    wrong_shape = new_job(ctx, model_file, sparsity=0.5, iterations=2)
    ctx.jobs.update(wrong_shape, lambda r: r.model_copy(
        update={"config": {**r.config, "input_shape": [1, 5, 16, 16]}}))  # fmt: skip
    assert execute(wrong_shape, ctx) == "failed"
    error = ctx.jobs.get(wrong_shape).error
    assert error["code"] == "invalid_input_shape" and "[1, 5, 16, 16]" in error["detail"]


def test_time_limit_stops_the_child(tmp_path, model_file):
    ctx = context(tmp_path, job_time_limit=3)
    job_id = new_job(ctx, model_file, sparsity=0.9, iterations=10000)
    started = time.monotonic()
    assert execute(job_id, ctx) == "failed"
    assert time.monotonic() - started < 15
    assert ctx.jobs.get(job_id).error["code"] == "time_limit"
    assert child_pid(job_id) is None


def test_a_job_runs_once(tmp_path, model_file):
    ctx = context(tmp_path)
    job_id = new_job(ctx, model_file, sparsity=0.5, iterations=2)
    assert execute(job_id, ctx) == "succeeded"
    assert execute(job_id, ctx) is None  # a redelivered message is dropped
    assert ctx.jobs.get(job_id).attempts == 1


def test_a_missing_required_sandbox_layer_fails_closed(tmp_path, model_file):
    # root needs no user namespace; a worker that is not root cannot change uid
    missing = "user-namespace" if os.geteuid() == 0 else "uid-drop"
    ctx = context(tmp_path, sandbox_required_layers=missing)
    job_id = new_job(ctx, model_file, sparsity=0.5, iterations=2)
    assert execute(job_id, ctx) == "failed"
    error = ctx.jobs.get(job_id).error
    assert error["code"] == "sandbox_unavailable" and missing in error["detail"]
    assert not ctx.artifacts.artifacts_dir(job_id).exists()


def test_sandbox_policy_comes_from_the_settings(tmp_path):
    settings = Settings(
        data_dir=tmp_path, job_time_limit=100, sandbox_uid_base=70000, sandbox_memory_bytes=1 << 30,
        sandbox_required_layers="uid-drop, seccomp",
    )  # fmt: skip
    policy = sandbox_policy(settings, tmp_path, tmp_path / "input.pt")
    assert (policy.uid, policy.gid) == (70000, 70000)  # slot 0 outside a Celery pool
    assert policy.limits.wall_seconds == 100 and policy.limits.memory_bytes == 1 << 30
    # CPU seconds accrue on every core at once: never the limit that stops a legitimate job
    assert policy.limits.cpu_seconds >= 100 * (os.cpu_count() or 1)
    assert policy.read_only_paths == (tmp_path / "input.pt",)
    assert policy.required_layers == {"uid-drop", "seccomp"}


def test_inconsistent_outputs_are_refused(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InvalidOutput, match="output folder"):
        check_artifacts(tmp_path, "torchscript")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.symlink_to(elsewhere)  # the child owned scratch: its folders may be links too
    with pytest.raises(InvalidOutput, match="output folder"):
        check_artifacts(tmp_path, "torchscript")
    out.unlink()
    out.mkdir()
    with pytest.raises(InvalidOutput, match="did not write"):
        check_artifacts(tmp_path, "torchscript")
    for name in ("masks.safetensors", "weights.safetensors", "model.pt", "report.json"):
        (out / name).write_bytes(b"x")
    with pytest.raises(InvalidOutput, match="report"):
        check_artifacts(tmp_path, "torchscript")
    (out / "model.pt").unlink()
    (out / "model.pt").symlink_to("/etc/passwd")  # would publish a file of the worker's
    with pytest.raises(InvalidOutput, match="plain"):
        check_artifacts(tmp_path, "torchscript")
    (out / "model.pt").unlink()
    os.link(out / "report.json", out / "model.pt")  # a hard link: a second name for a file
    with pytest.raises(InvalidOutput, match="plain"):
        check_artifacts(tmp_path, "torchscript")


def test_control_files_are_not_followed_through_links(tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"ok": true}')
    (tmp_path / "outcome.json").symlink_to(secret)
    assert read_json(tmp_path, "outcome.json") is None
    (tmp_path / "big.json").write_text('{"a": "' + "x" * (2 << 20) + '"}')
    assert read_json(tmp_path, "big.json") is None
    (tmp_path / "progress.json").write_text('{"iteration": "many"}')
    assert read_progress(tmp_path) is None
