"""Faults in the middle of a job, production mode (API + Celery worker + Redis), each with
SIGKILL: the sandboxed child, the Celery worker (then restarted, on every attempt), and Redis
itself. Every job ends `succeeded` exactly once or `failed` with a reason after the configured
attempts; queued jobs survive; nothing is left `running`.

Redis here is a private server on its own port and folder, with the production persistence
(`--appendonly yes --appendfsync everysec`), so that killing it touches nothing else."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from tests.service.harness import (
    SANDBOX_UID_BASE,
    Proc,
    base_env,
    client_for,
    free_port,
    running_with_progress,
    small_cnn,
    start_api,
    start_worker,
    submit,
    wait_status,
    wait_until,
    write_model,
)

pytestmark = pytest.mark.slow

MAX_ATTEMPTS = 2
LONG = 1500  # iterations: several seconds on the test model


class PrivateRedis:
    def __init__(self, folder: Path, log_dir: Path):
        self.folder = folder
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None

    def start(self) -> None:
        cmd = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.folder), "--save", "", "--appendonly", "yes",
            "--appendfsync", "everysec", "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        self.proc = Proc("redis", cmd, os.environ.copy(), self.log_dir)
        client = redis.Redis.from_url(self.url, socket_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, 20, f"private Redis did not start:\n{self.proc.log()}", self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    store = PrivateRedis(tmp_path_factory.mktemp("redis"), logs)
    store.start()
    env = base_env(
        tmp_path_factory.mktemp("data"),
        redis_url=store.url,
        queue="faults",
        heartbeat_timeout="3",
        max_attempts=str(MAX_ATTEMPTS),
    )
    api, url = start_api(env, logs)
    model = write_model(tmp_path_factory.mktemp("m") / "small.pt", small_cnn())
    state = {"env": env, "logs": logs, "url": url, "redis": store, "model": model}
    state["worker"] = start_worker(env, logs)
    yield state
    state["worker"].stop()
    api.stop()
    store.kill()


def job_pids() -> list[int]:
    """Processes running as one of this test run's job uids (the sandboxed children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid = entry.stat().st_uid
            except FileNotFoundError:
                continue
            if SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + 16:
                pids.append(int(entry.name))
    return pids


def child_pid(job_id: str) -> int | None:
    for pid in job_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"worker.child" in cmdline and job_id.encode() in cmdline:
            return pid
    return None


def attempts(stack, job_id: str) -> int:
    """Times the job was started (kept in the record, not shown by the API)."""
    from jobs.stores.redis_jobs import RedisJobStore

    return RedisJobStore(stack["redis"].url, "synflow:").get(job_id).attempts


def nothing_running(client) -> None:
    items = client.get("/jobs", params={"limit": 100}).json()["items"]
    assert not [j["id"] for j in items if j["status"] in ("running", "queued")]


def restart_worker(stack) -> None:
    stack["worker"].kill()  # SIGKILL to the worker's process group
    wait_until(lambda: not job_pids(), 15, "the killed worker's job processes live on")
    stack["worker"] = start_worker(stack["env"], stack["logs"])


def test_kill_the_sandboxed_child(stack):
    with client_for(stack["url"]) as client:
        victim = submit(client, stack["model"], sparsity=0.9, iterations=LONG).json()
        waiting = submit(client, stack["model"], sparsity=0.5, iterations=2).json()
        running_with_progress(client, victim["id"])
        pid = wait_until(lambda: child_pid(victim["id"]), 30, "no sandboxed child found")
        os.kill(pid, signal.SIGKILL)
        failed = wait_status(client, victim["id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "worker_crash"
        assert "SIGKILL" in failed["error"]["detail"]
        assert attempts(stack, victim["id"]) == 1  # the job's own crash: no retry
        assert wait_status(client, waiting["id"])["status"] == "succeeded"
        nothing_running(client)
    assert stack["worker"].alive()


def test_kill_the_worker_then_restart(stack):
    with client_for(stack["url"]) as client:
        victim = submit(client, stack["model"], sparsity=0.9, iterations=LONG).json()
        waiting = submit(client, stack["model"], sparsity=0.5, iterations=2).json()
        running_with_progress(client, victim["id"])
        restart_worker(stack)
        done = wait_status(client, victim["id"], timeout=180)
        assert done["status"] == "succeeded" and attempts(stack, victim["id"]) == 2, done
        assert done["progress"]["iteration"] == LONG
        assert wait_status(client, waiting["id"])["status"] == "succeeded"
        assert client.get(f"/jobs/{victim['id']}/masks").status_code == 200
        time.sleep(1)  # a duplicate delivery would show up as a second run now
        assert client.get(f"/jobs/{victim['id']}").json()["finished_at"] == done["finished_at"]
        nothing_running(client)


def test_worker_lost_on_every_attempt_fails_the_job(stack):
    with client_for(stack["url"]) as client:
        victim = submit(client, stack["model"], sparsity=0.9, iterations=LONG * 4).json()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            wait_until(
                lambda a=attempt: (
                    attempts(stack, victim["id"]) == a
                    and (j := client.get(f"/jobs/{victim['id']}").json())["status"] == "running"
                    and j["progress"]
                ),
                90,
                f"attempt {attempt} never ran",
            )
            restart_worker(stack)
        failed = wait_status(client, victim["id"], timeout=60)
        assert failed["status"] == "failed" and failed["error"]["code"] == "worker_lost"
        assert f"started {MAX_ATTEMPTS} times" in failed["error"]["detail"]
        nothing_running(client)


def test_kill_redis_mid_job_with_aof(stack):
    with client_for(stack["url"]) as client:
        running = submit(client, stack["model"], sparsity=0.9, iterations=LONG).json()
        queued = [submit(client, stack["model"], sparsity=0.5, iterations=2).json()
                  for _ in range(2)]  # fmt: skip
        running_with_progress(client, running["id"])
        time.sleep(1.5)  # appendfsync everysec: what was acknowledged a second ago is on disk
        stack["redis"].kill()
        time.sleep(2)
        stack["redis"].start()
        for job in (running, *queued):
            done = wait_status(client, job["id"], timeout=180)
            print("after Redis was killed:", job["id"], done["status"], done["error"])
            assert done["status"] in ("succeeded", "failed"), done
            if done["status"] == "failed":
                assert done["error"]["detail"], done
        assert [wait_status(client, j["id"])["status"] for j in queued] == ["succeeded"] * 2
        nothing_running(client)
    assert stack["worker"].alive()
    aof = list(stack["redis"].folder.rglob("*.aof")) + list(
        stack["redis"].folder.rglob("appendonly*")
    )
    assert aof, "Redis wrote no append-only file"
