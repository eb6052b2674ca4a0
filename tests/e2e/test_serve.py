"""`synflow serve` supervises its embedded worker: restarts it if it dies, and takes it along
when it dies itself (no orphans)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.service.harness import (
    base_env,
    client_for,
    start_api,
    submit,
    wait_status,
    wait_until,
    write_model,
)

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_serve_restarts_a_dead_worker_and_leaves_no_orphans(tmp_path):
    api, url = start_api(base_env(tmp_path / "data"), tmp_path)
    try:
        (worker,) = children(api.proc.pid)
        os.kill(worker, signal.SIGKILL)
        replacement = wait_until(lambda: [p for p in children(api.proc.pid) if p != worker], 30,
                                 "the worker was not restarted")  # fmt: skip
        with client_for(url) as client:
            job = submit(client, write_model(tmp_path / "m.pt"), sparsity=0.5, iterations=2).json()
            assert wait_status(client, job["id"])["status"] == "succeeded"
        pool = children(replacement[0])
        assert pool  # the Celery pool process
        os.kill(api.proc.pid, signal.SIGKILL)  # only serve itself, not its process group
        api.proc.wait()
        wait_until(lambda: not any(alive(p) for p in replacement + pool), 10,
                   "the worker outlived serve")  # fmt: skip
    finally:
        api.kill()
