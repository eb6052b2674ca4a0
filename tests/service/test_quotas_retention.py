"""Quotas of `POST /prune` over HTTP (in-process app, real stores: SQLite and Redis), the
release of inputs when a job ends, the expiry of finished jobs, the store gauges of /metrics,
and the retention setting's format."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from jobs import lifecycle, retention
from jobs.settings import Settings, hash_key
from service.app import create_app
from tests.service.harness import INPUT_SHAPE, drop_redis_keys, redis_settings, write_model

KEYS = {"alice": "alice-key", "bob": "bob-key"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "small.pt")


@pytest.fixture(params=["embedded", "redis"])
def make_app(request, tmp_path):
    """create_app(Settings(...)) on this mode's stores; nothing consumes the queue."""
    extra = redis_settings() if request.param == "redis" else {}
    apps = []

    def make(**settings):
        app = create_app(Settings(
            data_dir=tmp_path, rate_limit_per_minute=0,
            api_keys={t: hash_key(k) for t, k in KEYS.items()}, **extra, **settings,
        ))  # fmt: skip
        apps.append(app)
        return app

    yield make
    if extra:
        drop_redis_keys(extra["redis_prefix"])


def client(app, tenant: str) -> TestClient:
    return TestClient(app, headers={"Authorization": f"Bearer {KEYS[tenant]}"})


def submit(c: TestClient, model: Path):
    shape = ",".join(map(str, INPUT_SHAPE))
    return c.post("/prune", data={"sparsity": "0.5", "input_shape": shape},
                  files={"model": ("m.pt", model.read_bytes())})  # fmt: skip


def test_storage_quota_is_a_413_that_says_what_to_do(make_app, model_file):
    size = model_file.stat().st_size
    app = make_app(tenant_max_stored_bytes=int(size * 1.5))
    with client(app, "alice") as alice, client(app, "bob") as bob:
        first = submit(alice, model_file)
        assert first.status_code == 202, first.text
        refused = submit(alice, model_file)
        assert refused.status_code == 413
        assert refused.headers["content-type"] == "application/problem+json"
        body = refused.json()
        assert body["type"] == "urn:synflow:problem:storage_quota_exceeded"
        assert body["stored_bytes"] == size and body["limit"] == int(size * 1.5)
        assert "DELETE /jobs/{id}" in body["detail"] and "expire" in body["detail"]
        assert not list((app.state.settings.artifacts_path / "uploads").iterdir())  # not kept
        assert submit(bob, model_file).status_code == 202  # another tenant's own quota
        assert alice.delete(f"/jobs/{first.json()['id']}").status_code == 204
        assert submit(alice, model_file).status_code == 202  # deleting freed the space


def test_storage_quota_full_refuses_before_reading_the_upload(make_app, model_file):
    app = make_app(tenant_max_stored_bytes=model_file.stat().st_size)
    with client(app, "alice") as alice:
        assert submit(alice, model_file).status_code == 202  # exactly at the quota
        refused = alice.post("/prune", content=b"x" * 1000,
                             headers={"content-type": "application/octet-stream"})  # fmt: skip
        assert refused.status_code == 413  # not 415: refused before the body is looked at
        assert refused.json()["type"] == "urn:synflow:problem:storage_quota_exceeded"


def test_active_jobs_quota_is_a_429_and_canceling_frees_a_place(make_app, model_file):
    app = make_app(tenant_max_active_jobs=2)
    with client(app, "alice") as alice, client(app, "bob") as bob:
        ids = [submit(alice, model_file).json()["id"] for _ in range(2)]
        refused = submit(alice, model_file)
        assert refused.status_code == 429
        body = refused.json()
        assert body["type"] == "urn:synflow:problem:too_many_active_jobs"
        assert body["active_jobs"] == 2 and body["limit"] == 2
        assert "Wait for some to finish, or cancel" in body["detail"]
        assert submit(bob, model_file).status_code == 202
        # a queued job canceled ends at once: it leaves the quota, its upload is deleted
        upload = app.state.artifacts.input_path(ids[0])
        assert upload.is_file()
        assert alice.post(f"/jobs/{ids[0]}/cancel").json()["status"] == "canceled"
        assert not upload.exists()
        assert submit(alice, model_file).status_code == 202


def test_metrics_report_jobs_and_bytes_per_tenant(make_app, model_file):
    app = make_app()
    with client(app, "alice") as alice:
        for _ in range(2):
            assert submit(alice, model_file).status_code == 202
        text = alice.get("/metrics").text
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    alice_ = ("tenant", "alice")
    assert values["synflow_jobs", (("status", "queued"), alice_)] == 2
    assert values["synflow_jobs", (("status", "running"), alice_)] == 0
    size = model_file.stat().st_size
    assert values["synflow_stored_bytes", (("kind", "inputs"), alice_)] == 2 * size
    assert values["synflow_stored_bytes", (("kind", "artifacts"), alice_)] == 0
    assert values["synflow_artifact_volume_bytes", (("kind", "free"),)] > 0
    assert 'tenant="bob"' not in text  # nothing held, nothing reported


def test_inputs_released_and_finished_jobs_expired(make_app, model_file):
    app = make_app()
    jobs, artifacts = app.state.jobs, app.state.artifacts
    with client(app, "alice") as alice:
        ids = [submit(alice, model_file).json()["id"] for _ in range(3)]
    size = model_file.stat().st_size
    done = []
    for job_id in ids[:2]:
        record = lifecycle.claim_next(jobs, "w", 60, 3, 0)
        assert record.id == job_id  # one tenant: its jobs in submission order
        (artifacts.artifacts_dir(record.id)).mkdir()
        (artifacts.artifacts_dir(record.id) / "report.json").write_text("{}")
        lifecycle.finish(jobs, record.id, record.run_id, "succeeded", artifact_bytes=2)
        done.append(record.id)
    assert retention.release_input(jobs, artifacts, done[0], keep=True) is False
    assert artifacts.input_path(done[0]).is_file()
    assert retention.release_input(jobs, artifacts, done[0], keep=False) is True
    assert not artifacts.input_path(done[0]).exists()
    assert retention.release_input(jobs, artifacts, ids[2], keep=False) is False  # queued
    assert artifacts.input_path(ids[2]).is_file()
    usage = jobs.usage("alice")
    assert (usage.input_bytes, usage.artifact_bytes) == (2 * size, 4)

    assert retention.expire_finished(jobs, artifacts, retention=3600) == []
    assert retention.expire_finished(jobs, artifacts, retention=0) == []  # 0: kept
    old = jobs.get(done[0]).finished_at - timedelta(hours=2)
    jobs.update(done[0], lambda r: r.model_copy(update={"finished_at": old}))
    assert retention.expire_finished(jobs, artifacts, retention=3600) == [done[0]]
    assert jobs.get(done[0]) is None and not artifacts.job_dir(done[0]).exists()
    assert jobs.get(done[1]) is not None and artifacts.artifacts_dir(done[1]).is_dir()
    assert jobs.usage("alice").artifact_bytes == 2


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7d", 604800), ("12h", 43200), ("30m", 1800), ("45s", 45), ("90", 90), (2.5, 2.5),
     ("0", 0), ("604800.0", 604800)],
)  # fmt: skip
def test_retention_takes_seconds_or_a_unit(tmp_path, value, seconds):
    assert Settings(data_dir=tmp_path, retention=value).retention == seconds


@pytest.mark.parametrize("value", ["soon", "7w", "-1d", ""])
def test_retention_refuses_what_is_not_a_duration(tmp_path, value):
    with pytest.raises(ValidationError, match="retention"):
        Settings(data_dir=tmp_path, retention=value)


def test_defaults(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert settings.retention == 7 * 86400 and not settings.keep_inputs
    assert settings.tenant_max_running == 1 and settings.tenant_max_active_jobs == 20
    assert settings.tenant_max_stored_bytes == 32 << 30
