"""A worker running two jobs at once runs them as two distinct uids (one per pool slot): the
sandbox's RLIMIT_NPROC counts per uid, and a slot's next job first kills whatever its uid left."""

from __future__ import annotations

import os

import pytest

from tests.security.test_faults import child_pid
from tests.service.harness import (
    SANDBOX_UID_BASE,
    base_env,
    client_for,
    running_with_progress,
    small_cnn,
    start_api,
    submit,
    wait_status,
    wait_until,
    write_model,
)

pytestmark = pytest.mark.slow


def test_concurrent_jobs_run_as_distinct_uids(tmp_path):
    env = base_env(tmp_path / "data", worker_concurrency="2", tenant_max_running="2")
    model = write_model(tmp_path / "small.pt", small_cnn())
    api, url = start_api(env, tmp_path)
    try:
        with client_for(url) as client:
            jobs = [submit(client, model, sparsity=0.9, iterations=10_000).json()
                    for _ in range(2)]  # fmt: skip
            for job in jobs:
                running_with_progress(client, job["id"])
            pids = [wait_until(lambda j=j: child_pid(j["id"]), 30, "no child") for j in jobs]
            uids = {os.stat(f"/proc/{pid}").st_uid for pid in pids}
            assert len(uids) == 2, uids
            assert uids <= {SANDBOX_UID_BASE, SANDBOX_UID_BASE + 1}
            for job in jobs:
                client.post(f"/jobs/{job['id']}/cancel")
            for job in jobs:
                assert wait_status(client, job["id"])["status"] == "canceled"
            wait_until(lambda: all(child_pid(j["id"]) is None for j in jobs), 15, "child left")
    finally:
        api.stop()
