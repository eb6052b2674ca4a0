"""Webhooks through the real service: `POST /prune` with a `callback_url`, a real Celery worker
running the job, and a real receiver on loopback (allowed by SYNFLOW_WEBHOOK_ALLOW) that gets
the signed job object; the delivery shows in `GET /jobs/{id}`. Embedded mode and Redis mode.
Also: a job canceled while queued, which no worker runs, gets its webhook too."""

from __future__ import annotations

import json
import uuid

import pytest

from jobs.settings import hash_key
from synflow.webhooks import new_secret, verify
from tests.service.harness import (
    client_for,
    running_service,
    running_with_progress,
    submit,
    wait_status,
    wait_until,
    write_model,
)
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.slow

KEYS = {"alice": "alice-hook-key", "bob": "bob-hook-key"}
SECRET = new_secret()  # alice's; bob has none
LONG = {"sparsity": 0.99, "iterations": 10000}  # tens of seconds on this tiny model


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module", params=["embedded", "redis"])
def service(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"hooks-{request.param}")
    settings = {
        "api_keys": json.dumps({tenant: hash_key(key) for tenant, key in KEYS.items()}),
        "webhook_secrets": json.dumps({"alice": SECRET}),
        "webhook_allow": "127.0.0.1/32",
        "webhook_backoff": "0.2",
        "webhook_attempts": "3",
        "webhook_poll_interval": "0.2",
    }
    with running_service(request.param, tmp, settings) as (url, _):
        yield url


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("model") / "small.pt")


def settled(client, job_id: str, timeout: float = 60) -> dict:
    """The job once its webhook is no longer pending."""

    def check():
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["callback"] and job["callback"]["status"] != "pending" else None

    return wait_until(check, timeout, f"the webhook of job {job_id} stayed pending")


def test_a_finished_job_posts_its_signed_job_object(service, receiver, model_file):
    path = f"/flaky/1/{uuid.uuid4()}"  # a 500 first: delivered by the retry
    with client_for(service, KEYS["alice"]) as client:
        answer = submit(
            client, model_file, sparsity=0.5, iterations=3, callback_url=receiver.url(path)
        )
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert job["callback"] == {
            "url": receiver.url(path), "status": "pending", "attempts": 0, "last_error": None,
            "next_attempt_at": None,
        }  # fmt: skip
        assert wait_status(client, job["id"])["status"] == "succeeded"
        job = settled(client, job["id"])
    assert job["callback"]["status"] == "delivered", job["callback"]
    assert job["callback"]["attempts"] == 2 and job["callback"]["last_error"] is None
    first, second = receiver.at(path)
    for got in (first, second):
        verify(got.headers, got.body, SECRET)
        assert got.headers["webhook-id"] == f"msg_{job['id']}"
    body = json.loads(second.body)
    for key in ("id", "status", "config", "result", "finished_at", "links"):
        assert body[key] == job[key], key
    assert body["status"] == "succeeded" and body["result"]["sparsity"] > 0


def test_a_job_canceled_while_queued_posts_too(service, receiver, model_file):
    """One running job holds alice's one slot (tenant_max_running=1), so the second stays
    queued; canceled there, no worker runs it, and its webhook still goes out."""
    running_path, queued_path = f"/ok/{uuid.uuid4()}", f"/ok/{uuid.uuid4()}"
    with client_for(service, KEYS["alice"]) as client:
        first = submit(client, model_file, **LONG, callback_url=receiver.url(running_path)).json()
        running_with_progress(client, first["id"])
        second = submit(client, model_file, **LONG, callback_url=receiver.url(queued_path)).json()
        assert client.get(f"/jobs/{second['id']}").json()["status"] == "queued"
        assert client.post(f"/jobs/{second['id']}/cancel").status_code == 200
        job = settled(client, second["id"])
        assert job["callback"]["status"] == "delivered", job["callback"]
        # delivered while the first job still runs: the courier does not wait for the worker
        assert client.get(f"/jobs/{first['id']}").json()["status"] == "running"
        [got] = receiver.at(queued_path)
        verify(got.headers, got.body, SECRET)
        assert json.loads(got.body)["status"] == "canceled"
        # canceled while running: the worker ends it, and the webhook follows
        assert client.post(f"/jobs/{first['id']}/cancel").status_code == 202
        assert wait_status(client, first["id"])["status"] == "canceled"
        assert settled(client, first["id"])["callback"]["status"] == "delivered"
    assert json.loads(receiver.at(running_path)[0].body)["status"] == "canceled"


def test_a_redirect_is_recorded_as_failed(service, receiver, model_file):
    path = f"/redirect/{uuid.uuid4()}"
    with client_for(service, KEYS["alice"]) as client:
        job = submit(
            client, model_file, sparsity=0.5, iterations=2, callback_url=receiver.url(path)
        ).json()
        job = settled(client, job["id"])
    assert job["callback"]["status"] == "failed" and job["callback"]["attempts"] == 3
    assert "redirect" in job["callback"]["last_error"]
    assert len(receiver.at(path)) == 3


@pytest.mark.parametrize(
    ("tenant", "url", "code", "words"),
    [
        ("alice", "http://10.0.0.5/hook", "invalid_callback_url", "private address"),
        ("alice", "http://localhost:8000/hook", "invalid_callback_url", "loopback"),
        ("alice", "http://169.254.169.254/latest", "invalid_callback_url", "metadata"),
        ("alice", "ftp://hooks.example.com/", "invalid_callback_url", "http or https"),
        ("bob", "https://hooks.example.com/", "webhooks_not_configured", "no webhook secret"),
    ],
)
def test_bad_callback_urls_are_refused_at_submit(service, model_file, tenant, url, code, words):
    with client_for(service, KEYS[tenant]) as client:
        answer = submit(client, model_file, sparsity=0.5, callback_url=url)
        assert answer.status_code == 422, answer.text
        problem = answer.json()
        assert problem["type"] == f"urn:synflow:problem:{code}", problem
        assert words in problem["detail"], problem
        # the JSON config part takes the same key, with the same checks
        with model_file.open("rb") as fh:
            config = {"sparsity": 0.5, "input_shape": [1, 3, 16, 16], "callback_url": url}
            answer = client.post(
                "/prune", data={"config": json.dumps(config)}, files={"model": ("m.pt", fh)}
            )
        assert answer.status_code == 422, answer.text
        assert answer.json()["type"] == f"urn:synflow:problem:{code}", answer.text
