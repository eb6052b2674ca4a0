"""Real processes for the service tests: the API (uvicorn) on a free port, Celery workers, a
Redis connection, and small TorchScript models built in code."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("SYNFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TERMINAL = ("succeeded", "failed", "canceled")
INPUT_SHAPE = (1, 3, 16, 16)
#: job uids of this test run: the sandbox kills every process of a slot's uid before a job
#: starts, so test runs that share this machine must not share uids
SANDBOX_UID_SLOTS = 16
SANDBOX_UID_BASE = 200_000 + random.SystemRandom().randrange(100_000) * SANDBOX_UID_SLOTS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """A clean environment for a service process: only what it needs, plus SYNFLOW_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNFLOW_") and k != "REDIS_URL"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["SYNFLOW_DATA_DIR"] = str(data_dir)
    env["SYNFLOW_DEVICE"] = "cpu"
    env["OMP_NUM_THREADS"] = "1"
    env["SYNFLOW_SANDBOX_UID_BASE"] = str(SANDBOX_UID_BASE)
    env["SYNFLOW_SANDBOX_UID_SLOTS"] = str(SANDBOX_UID_SLOTS)
    env["SYNFLOW_RATE_LIMIT_PER_MINUTE"] = "0"  # tests that need the limit set it
    env.update({("REDIS_URL" if k == "redis_url" else f"SYNFLOW_{k.upper()}"): v
                for k, v in settings.items()})  # fmt: skip
    return env


def redis_settings() -> dict[str, str]:
    """Settings that keep one test run's keys and queue apart from everything else in Redis."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:  # CI must fail, not skip, without Redis
        pytest.fail(f"Redis is required at {REDIS_URL} for the production-mode tests: {exc}")
    tag = uuid.uuid4().hex[:10]
    return {"redis_url": REDIS_URL, "redis_prefix": f"synflow-test-{tag}:", "queue": f"t{tag}"}


def drop_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


class Proc:
    """A process in its own process group, its output in a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, wait: float = 30) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # the group may outlive its leader for a moment (pool processes, job children)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self._log.close()

    def stop(self) -> None:
        self.kill(signal.SIGTERM, wait=15)


def start_api(env: dict[str, str], log_dir: Path, port: int | None = None) -> tuple[Proc, str]:
    """`python -m service serve` (embedded: API + worker; with REDIS_URL: the API alone)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = Proc("api", cmd, env, log_dir)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(url), 60, f"API did not become ready:\n{proc.log()[-3000:]}", proc)
    return proc, url


def start_worker(env: dict[str, str], log_dir: Path, concurrency: int = 1) -> Proc:
    """A production-style worker: `celery -A worker.celery_app worker`."""
    cmd = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--loglevel", "INFO", "--concurrency", str(concurrency), "--queues", env["SYNFLOW_QUEUE"],
        "--hostname", f"test-{uuid.uuid4().hex[:8]}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    proc = Proc("worker", cmd, env, log_dir)
    wait_until(lambda: " ready." in proc.log(), 60, f"worker not ready:\n{proc.log()}", proc)
    return proc


@contextlib.contextmanager
def running_service(
    mode: str, tmp: Path, settings: dict[str, str], concurrency: int = 1
) -> Iterator[tuple[str, list[Proc]]]:
    """The service in `mode`: "embedded" (`synflow serve`, its own worker) or "redis" (the API
    plus one Celery worker, on this test's Redis prefix); yields its URL and processes, and on
    exit stops them and drops the Redis keys."""
    if mode == "redis":
        settings = {**settings, **redis_settings()}
    env = base_env(tmp / "data", **settings)
    procs: list[Proc] = []
    try:
        api, url = start_api(env, tmp)
        procs.append(api)
        if mode == "redis":
            procs.append(start_worker(env, tmp, concurrency))
        yield url, procs
    finally:
        for proc in procs:
            proc.stop()
        if mode == "redis":
            drop_redis_keys(settings["redis_prefix"])


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check, timeout: float, message: str, proc: Proc | None = None, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited early:\n{proc.log()[-3000:]}")
        time.sleep(every)
    raise AssertionError(message)


# --- models and requests --------------------------------------------------------------------------


def small_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()  # fmt: skip


def write_model(path: Path, model=None) -> Path:
    import torch

    torch.jit.save(torch.jit.script(model if model is not None else small_cnn()), str(path))
    return path


def submit(client: httpx.Client, model: Path, **fields) -> httpx.Response:
    data = {"input_shape": ",".join(map(str, INPUT_SHAPE)), **fields}
    with model.open("rb") as fh:
        return client.post("/prune", data={k: str(v) for k, v in data.items()},
                           files={"model": ("model.pt", fh)})  # fmt: skip


def wait_status(client: httpx.Client, job_id: str, statuses=TERMINAL, timeout=90.0) -> dict:
    last: dict = {}

    def check():
        nonlocal last
        last = client.get(f"/jobs/{job_id}").json()
        return last if last["status"] in statuses else None

    return wait_until(check, timeout, f"job {job_id} never reached {statuses}: {last}")


def running_with_progress(client: httpx.Client, job_id: str, timeout=60.0) -> dict:
    def check():
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        return job if job["progress"] and job["progress"]["iteration"] > 0 else None

    return wait_until(check, timeout, f"job {job_id} never reported progress")


@contextlib.contextmanager
def client_for(url: str, key: str | None = None) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        yield client
