"""Fairness, quotas and retention end to end over real HTTP, in both running modes, with one
worker process of two slots (embedded: `serve`'s own worker; production: a `celery worker` on
Redis): a tenant that queues 10 endless jobs holds one slot (its running cap) and meets its
queued-job quota, while another tenant's job still starts and succeeds; a job's upload is
deleted when it ends; a finished job expires after the (tiny) retention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.settings import hash_key
from tests.service.harness import (
    base_env,
    client_for,
    drop_redis_keys,
    redis_settings,
    running_with_progress,
    start_api,
    start_worker,
    submit,
    wait_status,
    wait_until,
    write_model,
)

pytestmark = pytest.mark.slow

KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key"}
ACTIVE_QUOTA = 10
RETENTION_S = 8
#: many minutes on this tiny model: runs for the whole test unless deleted
ENDLESS = {"sparsity": 0.99, "iterations": 10000, "input_shape": "1,3,64,64"}
SHORT = {"sparsity": 0.5, "iterations": 20}


class Service:
    def __init__(self, url: str, data_dir: Path):
        self.url, self.data_dir = url, data_dir

    def client(self, tenant: str):
        return client_for(self.url, KEYS[tenant])

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "artifacts" / "jobs" / job_id


@pytest.fixture(scope="module", params=["embedded", "redis"])
def service(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"fair-{request.param}")
    settings = {
        "api_keys": json.dumps({tenant: hash_key(key) for tenant, key in KEYS.items()}),
        "worker_concurrency": "2",
        "tenant_max_running": "1",
        "tenant_max_active_jobs": str(ACTIVE_QUOTA),
        "retention": f"{RETENTION_S}s",
        "heartbeat_timeout": "10",  # the sweep (and so expiry) runs every 5 s
    }
    if request.param == "redis":
        settings.update(redis_settings())
    env = base_env(tmp / "data", **settings)
    procs = []
    try:
        api, url = start_api(env, tmp)
        procs.append(api)
        if request.param == "redis":
            procs.append(start_worker(env, tmp, concurrency=2))
        yield Service(url, tmp / "data")
    finally:
        for proc in procs:
            proc.stop()
        if request.param == "redis":
            drop_redis_keys(settings["redis_prefix"])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "small.pt")


def test_endless_jobs_of_one_tenant_do_not_starve_another(service, model_file):
    with service.client("alice") as alice, service.client("bob") as bob:
        ids = []
        try:
            for _ in range(ACTIVE_QUOTA):
                response = submit(alice, model_file, **ENDLESS)
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
            running_with_progress(alice, ids[0], timeout=180)  # her oldest job runs first...

            refused = submit(alice, model_file, **ENDLESS)  # ...and her quota is full
            assert refused.status_code == 429, refused.text
            assert refused.json()["type"] == "urn:synflow:problem:too_many_active_jobs"
            assert "cancel" in refused.json()["detail"]

            metrics = alice.get("/metrics").text
            assert 'synflow_jobs{status="running",tenant="alice"} 1.0' in metrics
            assert f'synflow_jobs{{status="queued",tenant="alice"}} {ACTIVE_QUOTA - 1}.0' in metrics

            job = submit(bob, model_file, **SHORT).json()
            done = wait_status(bob, job["id"], timeout=240)
            assert done["status"] == "succeeded", done["error"]
            statuses = [alice.get(f"/jobs/{i}").json()["status"] for i in ids]
            # bob ran beside her endless job, on the slot her cap kept free for others
            assert statuses == ["running"] + ["queued"] * (ACTIVE_QUOTA - 1), statuses
        finally:
            for job_id in ids:
                alice.delete(f"/jobs/{job_id}")
        assert alice.get("/jobs").json()["items"] == []


def test_inputs_go_when_a_job_ends_and_finished_jobs_expire(service, model_file):
    with service.client("bob") as bob:
        job = submit(bob, model_file, **SHORT).json()
        folder = service.job_dir(job["id"])
        done = wait_status(bob, job["id"], timeout=240)
        assert done["status"] == "succeeded", done["error"]
        wait_until(lambda: not (folder / "input").exists(), 10, "the upload was kept")
        assert bob.get(f"/jobs/{job['id']}/masks").status_code == 200
        metrics = bob.get("/metrics").text
        assert 'synflow_stored_bytes{kind="inputs",tenant="bob"} 0.0' in metrics

        canceled = submit(bob, model_file, **ENDLESS).json()
        running_with_progress(bob, canceled["id"], timeout=180)
        assert bob.post(f"/jobs/{canceled['id']}/cancel").status_code in (200, 202)
        assert wait_status(bob, canceled["id"], timeout=60)["status"] == "canceled"
        wait_until(
            lambda: not (service.job_dir(canceled["id"]) / "input").exists(),
            10,
            "the canceled job's upload was kept",
        )

        for finished in (job, canceled):  # both expire, record and files
            wait_until(
                lambda f=finished: bob.get(f"/jobs/{f['id']}").status_code == 404,
                RETENTION_S + 90,
                f"job {finished['id']} did not expire",
            )
            assert not service.job_dir(finished["id"]).exists()
        assert bob.get(f"/jobs/{job['id']}/masks").status_code == 404
