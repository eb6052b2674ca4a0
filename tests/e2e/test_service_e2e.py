"""End to end over real HTTP: uvicorn on a free port, a real Celery worker process, real stores,
in both running modes (embedded: `serve` with the filesystem transport and SQLite; production:
Redis broker and job store with a separate `celery worker`). One service per mode per module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.settings import hash_key
from tests.e2e.checks import check_artifacts, download_all
from tests.service.harness import (
    REPO_ROOT,
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

KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key"}
MAX_UPLOAD = 1_000_000
LONG = {"sparsity": 0.99, "iterations": 10000}  # tens of seconds on this tiny model


class Service:
    def __init__(self, mode: str, url: str, data_dir: Path):
        self.mode, self.url, self.data_dir = mode, url, data_dir

    def client(self, tenant: str = "alice"):
        return client_for(self.url, KEYS[tenant])


@pytest.fixture(scope="module", params=["embedded", "redis"])
def service(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"svc-{request.param}")
    settings = {
        "api_keys": json.dumps({tenant: hash_key(key) for tenant, key in KEYS.items()}),
        "max_upload_bytes": str(MAX_UPLOAD),
    }
    if request.param == "redis":
        settings.update(redis_settings())
    env = base_env(tmp / "data", **settings)
    procs = []
    try:
        api, url = start_api(env, tmp)
        procs.append(api)
        if request.param == "redis":
            procs.append(start_worker(env, tmp))
        yield Service(request.param, url, tmp / "data")
    finally:
        for proc in procs:
            proc.stop()
        if request.param == "redis":
            drop_redis_keys(settings["redis_prefix"])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "small.pt")


def test_prune_poll_download(service, model_file, tmp_path):
    with service.client() as client:
        response = submit(client, model_file, sparsity=0.9, iterations=20)
        assert response.status_code == 202, response.text
        job = response.json()
        assert response.headers["location"] == f"/jobs/{job['id']}"
        assert job["status"] == "queued" and job["config"]["iterations"] == 20
        job = wait_status(client, job["id"])
        assert job["status"] == "succeeded", job["error"]
        assert job["progress"] == {"iteration": 20, "iterations": 20, "density": pytest.approx(
            1 - job["result"]["sparsity"])}  # fmt: skip
        assert job["started_at"] <= job["finished_at"]
        paths = download_all(client, job, tmp_path / "artifacts")
    check_artifacts(paths, small_cnn(), job)


def test_cancel_long_job_mid_run(service, model_file):
    with service.client() as client:
        job = submit(client, model_file, **LONG).json()
        running_with_progress(client, job["id"])
        response = client.post(f"/jobs/{job['id']}/cancel")
        assert response.status_code in (200, 202), response.text
        asked = time.monotonic()
        job = wait_status(client, job["id"], timeout=10)
        assert job["status"] == "canceled"
        assert time.monotonic() - asked < 5
        assert job["progress"]["iteration"] < LONG["iterations"]
        for name in ("masks", "model"):
            response = client.get(f"/jobs/{job['id']}/{name}")
            assert response.status_code == 409
            assert response.headers["content-type"] == "application/problem+json"
        # no half-written artifacts, no scratch left behind
        assert not (service.data_dir / "artifacts" / "jobs" / job["id"] / "artifacts").exists()
        wait_until(
            lambda: not list((service.data_dir / "scratch").glob(f"{job['id']}*")),
            5,
            "scratch folder left behind",
        )
        # cancelling again is harmless
        assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "canceled"


def test_list_newest_first_paginated(service, model_file):
    with service.client("bob") as client:
        ids = [submit(client, model_file, sparsity=0.5, **{"iterations": 5000}).json()["id"]
               for _ in range(3)]  # fmt: skip
        try:
            first = client.get("/jobs", params={"limit": 2}).json()
            assert [j["id"] for j in first["items"]] == ids[::-1][:2]
            assert first["next_cursor"] and "next" in first["links"]
            second = client.get(first["links"]["next"]).json()
            assert [j["id"] for j in second["items"]] == ids[:1]
            assert second["next_cursor"] is None
        finally:
            for job_id in ids:
                client.post(f"/jobs/{job_id}/cancel")
        for job_id in ids:
            assert wait_status(client, job_id, timeout=15)["status"] == "canceled"
        assert client.get("/jobs", params={"cursor": "abc"}).status_code == 422


def test_other_tenant_sees_404(service, model_file):
    with service.client("alice") as alice, service.client("bob") as bob:
        job = submit(alice, model_file, sparsity=0.5, iterations=5000).json()
        try:
            for method, path in [
                ("GET", f"/jobs/{job['id']}"),
                ("GET", f"/jobs/{job['id']}/report"),
                ("POST", f"/jobs/{job['id']}/cancel"),
                ("DELETE", f"/jobs/{job['id']}"),
            ]:
                response = bob.request(method, path)
                assert response.status_code == 404, (method, path, response.text)
            assert job["id"] not in [j["id"] for j in bob.get("/jobs").json()["items"]]
            assert alice.get(f"/jobs/{job['id']}").status_code == 200
        finally:
            alice.delete(f"/jobs/{job['id']}")
        with client_for(service.url) as anonymous:
            response = anonymous.get("/jobs")
            assert response.status_code == 401 and response.headers["www-authenticate"]
        with client_for(service.url, "wrong-key") as intruder:
            assert intruder.get("/jobs").status_code == 401


def test_delete_running_job(service, model_file):
    with service.client() as client:
        job = submit(client, model_file, **LONG).json()
        running_with_progress(client, job["id"])
        assert client.delete(f"/jobs/{job['id']}").status_code == 204
        assert client.get(f"/jobs/{job['id']}").status_code == 404
        assert client.delete(f"/jobs/{job['id']}").status_code == 404
        job_dir = service.data_dir / "artifacts" / "jobs" / job["id"]
        time.sleep(1)  # the worker notices within a poll and stops the child
        wait_until(lambda: not job_dir.exists(), 5, "job files left behind")
        # the worker is free again: a new job runs to the end
        quick = submit(client, model_file, sparsity=0.5, iterations=5).json()
        assert wait_status(client, quick["id"])["status"] == "succeeded"


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_upload_is_413_over_http(service, chunked):
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.pt"\r\n\r\n'
    ).encode()
    chunks = [
        head,
        *([b"\0" * 65536] * (4 * MAX_UPLOAD // 65536)),
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    body = iter(chunks) if chunked else b"".join(chunks)
    with service.client() as client:
        response = client.post(
            "/prune",
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    assert response.status_code == 413, response.text
    assert response.json()["type"] == "urn:synflow:problem:upload_too_large"
    assert not list((service.data_dir / "artifacts" / "uploads").iterdir())


def run_cli(service, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SYNFLOW_API_KEY": KEYS["alice"]}
    return subprocess.run(
        [sys.executable, "-m", "service", *args, "--url", service.url],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_remote_cli(service, model_file, tmp_path):
    bad = run_cli(service, "submit", str(model_file), "--sparsity", "2")
    assert bad.returncode == 2 and "sparsity" in bad.stderr  # refused before any upload

    flags = ["--sparsity", "0.5", "--iterations", "3", "--input-shape", "1,3,16,16"]
    flags += ["--exclude", "0.*", "--wait", "--interval", "0.2"]
    done = run_cli(service, "submit", str(model_file), *flags)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["config"]["exclude"] == ["0.*"]

    status = run_cli(service, "status", job["id"])
    assert json.loads(status.stdout)["result"] == job["result"]
    listing = run_cli(service, "jobs", "--limit", "1")
    assert listing.stdout.startswith(f"{job['id']}  succeeded")

    out = tmp_path / "pruned"
    assert run_cli(service, "download", job["id"], "--out", str(out)).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "masks.safetensors", "model.pt", "report.json", "report.png", "weights.safetensors"
    ]  # fmt: skip

    assert run_cli(service, "delete", job["id"]).returncode == 0
    gone = run_cli(service, "cancel", job["id"])
    assert gone.returncode == 1 and "HTTP 404" in gone.stderr
