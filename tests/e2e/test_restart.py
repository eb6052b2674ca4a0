"""Kill the API and the worker (SIGKILL, the hardest case) while one job runs and another waits,
start them again: both jobs end `succeeded`; none is lost. The lost worker's job is requeued once
its heartbeat is older than `heartbeat_timeout` (short here)."""

from __future__ import annotations

import pytest

from tests.e2e.checks import check_artifacts, download_all
from tests.service.harness import (
    base_env,
    client_for,
    drop_redis_keys,
    redis_settings,
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


@pytest.mark.parametrize("mode", ["embedded", "redis"])
def test_restart_api_and_worker_loses_no_job(mode, tmp_path):
    settings = {"heartbeat_timeout": "3"}
    if mode == "redis":
        settings.update(redis_settings())
    env = base_env(tmp_path / "data", **settings)
    model = write_model(tmp_path / "small.pt")
    procs = []

    def start():
        api, url = start_api(env, tmp_path)
        procs.append(api)
        if mode == "redis":
            procs.append(start_worker(env, tmp_path))
        return url

    try:
        url = start()
        with client_for(url) as client:
            running = submit(client, model, sparsity=0.9, iterations=1500).json()
            waiting = submit(client, model, sparsity=0.9, iterations=20).json()
            running_with_progress(client, running["id"])
        for proc in procs:
            proc.kill()  # SIGKILL to the whole process group, job child included
        procs.clear()

        url = start()
        with client_for(url) as client:
            for job in (running, waiting):
                done = wait_status(client, job["id"], timeout=120)
                assert done["status"] == "succeeded", done
            job = client.get(f"/jobs/{waiting['id']}").json()
            check_artifacts(download_all(client, job, tmp_path / "out"), small_cnn(), job)
            first = client.get(f"/jobs/{running['id']}").json()
            assert first["progress"]["iteration"] == 1500
        scratch = tmp_path / "data" / "scratch"  # the killed run's folder is swept away
        wait_until(lambda: not list(scratch.iterdir()), 15, "orphan scratch folder left")
        worker_log = procs[-1].log()  # embedded: the worker writes into the serve log
        assert f"job {running['id']}: its worker" in worker_log and "requeued" in worker_log
    finally:
        for proc in procs:
            proc.stop()
        if mode == "redis":
            drop_redis_keys(settings["redis_prefix"])
