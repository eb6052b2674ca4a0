"""Webhook delivery (jobs/webhooks/) from real job stores to a real receiver on loopback: signed
and verified, retried after a 500, refused for loopback and private hosts without the
allow-list, redirects not followed, time and answer size bounded, and the state recorded on
the job. The API and worker around it: tests/e2e/test_webhooks_e2e.py."""

from __future__ import annotations

import io
import json
import logging
import ssl
import time
import uuid

import pytest
import trustme

from jobs.job_object import JobOut
from jobs.logs import JsonFormatter, ScopeFilter
from jobs.records import Callback, JobRecord, utcnow
from jobs.settings import Settings
from jobs.stores.redis_jobs import RedisJobStore
from jobs.stores.sqlite_jobs import SqliteJobStore
from jobs.webhooks import outbox
from jobs.webhooks.courier import deliver_due, message_id
from synflow.webhooks import new_secret, verify
from tests.service.harness import REDIS_URL, drop_redis_keys, redis_settings, wait_until
from tests.webhooks.receiver import Receiver

SECRET = new_secret()


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield SqliteJobStore(tmp_path / "jobs.sqlite3")
        return
    prefix = redis_settings()["redis_prefix"]
    try:
        yield RedisJobStore(REDIS_URL, prefix)
    finally:
        drop_redis_keys(prefix)


def make_settings(tmp_path, **overrides) -> Settings:
    values = {
        "data_dir": tmp_path,
        "webhook_secrets": {"alice": SECRET},
        "webhook_allow": "127.0.0.1/32",
        "webhook_attempts": 3,
        "webhook_backoff": 0.05,
        "webhook_timeout": 5.0,
        **overrides,
    }
    return Settings(**values)


def ended_job(store, url: str, status: str = "succeeded", tenant: str = "alice") -> str:
    record = JobRecord(
        id=str(uuid.uuid4()),
        tenant=tenant,
        config={"sparsity": 0.5},
        input_format="torchscript",
        input_bytes=10,
        callback=Callback(url=url),
    )
    store.create(record)
    store.update(
        record.id, lambda r: r.model_copy(update={"status": status, "finished_at": utcnow()})
    )
    return record.id


def settle(store, settings, job_id: str, timeout: float = 30) -> Callback:
    """Run the courier's passes until the job's webhook is no longer pending."""

    def check():
        deliver_due(store, settings)
        callback = store.get(job_id).callback
        return callback if callback.status != "pending" else None

    return wait_until(check, timeout, f"webhook of {job_id} still pending", every=0.02)


def test_delivered_signed_and_recorded(store, receiver, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path)
    path = f"/ok/{uuid.uuid4()}"
    job_id = ended_job(store, receiver.url(path))
    lines = io.StringIO()  # the JSON log lines, formatted as they are emitted
    handler = logging.StreamHandler(lines)
    handler.addFilter(ScopeFilter())
    handler.setFormatter(JsonFormatter())
    logging.getLogger("worker").addHandler(handler)
    try:
        callback = settle(store, settings, job_id)
    finally:
        logging.getLogger("worker").removeHandler(handler)
    assert (callback.status, callback.attempts, callback.last_error) == ("delivered", 1, None)
    [got] = receiver.at(path)
    verify(got.headers, got.body, SECRET)
    assert got.headers["webhook-id"] == message_id(job_id)
    assert got.headers["content-type"] == "application/json"
    body = json.loads(got.body)
    # the job object of GET /jobs/{id}, as it was when sent
    expected = json.loads(JobOut.of(store.get(job_id)).model_dump_json())
    for key in ("id", "status", "config", "links", "created_at", "finished_at", "error"):
        assert body[key] == expected[key], key
    assert body["callback"]["url"] == callback.url and body["callback"]["attempts"] == 1
    # the courier's line names the job and its tenant in JSON logs (jobs/logs.py)
    (line,) = [json.loads(x) for x in lines.getvalue().splitlines() if "delivered" in x]
    assert (line["job_id"], line["tenant"]) == (job_id, store.get(job_id).tenant)


def test_a_500_is_retried_with_the_same_id(store, receiver, tmp_path):
    settings = make_settings(tmp_path)
    path = f"/flaky/1/{uuid.uuid4()}"
    job_id = ended_job(store, receiver.url(path), status="failed")
    callback = settle(store, settings, job_id)
    assert (callback.status, callback.attempts) == ("delivered", 2)
    first, second = receiver.at(path)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == message_id(job_id)
    for got in (first, second):
        verify(got.headers, got.body, SECRET)


def test_retries_end_failed_with_the_last_error(store, receiver, tmp_path):
    settings = make_settings(tmp_path)
    path = f"/status/500/{uuid.uuid4()}"
    job_id = ended_job(store, receiver.url(path))
    callback = settle(store, settings, job_id)
    assert (callback.status, callback.attempts) == ("failed", 3)
    assert callback.last_error.startswith("the receiver answered 500")
    assert len(receiver.at(path)) == 3


def test_the_backoff_doubles(store, receiver, tmp_path):
    settings = make_settings(tmp_path, webhook_backoff=0.4)
    path = f"/status/503/{uuid.uuid4()}"
    job_id = ended_job(store, receiver.url(path))
    started = time.monotonic()
    settle(store, settings, job_id)
    # the waits were 0.4 s, then 0.8 s
    assert time.monotonic() - started >= 1.2
    assert len(receiver.at(path)) == 3
    record = store.get(job_id)
    assert record.callback.next_attempt_at is None and record.callback_due is None


def test_loopback_is_refused_without_the_allow_list(store, receiver, tmp_path):
    settings = make_settings(tmp_path, webhook_allow="")
    path = f"/ok/{uuid.uuid4()}"
    job_id = ended_job(store, receiver.url(path))
    callback = settle(store, settings, job_id)
    assert (callback.status, callback.attempts) == ("refused", 1)
    assert "127.0.0.1 is a loopback address" in callback.last_error
    assert "SYNFLOW_WEBHOOK_ALLOW" in callback.last_error
    assert receiver.at(path) == []


def test_a_private_host_is_refused_without_connecting(store, tmp_path):
    settings = make_settings(tmp_path, webhook_timeout=30.0)
    job_id = ended_job(store, "http://10.255.0.1:9/hook")
    started = time.monotonic()
    callback = settle(store, settings, job_id)
    assert (callback.status, callback.attempts) == ("refused", 1)
    assert "private address" in callback.last_error
    assert time.monotonic() - started < 10  # no connection attempt (it would take 30 s)


def test_a_host_name_on_the_allow_list_may_be_loopback(store, receiver, tmp_path):
    settings = make_settings(tmp_path, webhook_allow="localhost")
    path = f"/ok/{uuid.uuid4()}"
    job_id = ended_job(store, f"http://localhost:{receiver.port}{path}")
    callback = settle(store, settings, job_id)
    # delivered even where localhost is ::1 first (no one listens there): the next address
    assert callback.status == "delivered", callback
    [got] = receiver.at(path)
    assert got.headers["host"] == f"localhost:{receiver.port}"


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory):
    ca = trustme.CA()
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return ca, bundle


def tls_receiver(ca, name: str) -> Receiver:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(name).configure_cert(context)
    return Receiver(tls=context)


def test_https_checks_the_certificate_against_the_host_name(store, tls_ca, tmp_path):
    """The connection goes to the checked address, yet TLS is checked against the name in the
    URL (SNI): a certificate for that name passes, one for another name does not."""
    ca, bundle = tls_ca
    settings = make_settings(tmp_path, webhook_allow="localhost", webhook_ca_file=bundle)
    with tls_receiver(ca, "localhost") as good, tls_receiver(ca, "other.example") as wrong:
        path = f"/ok/{uuid.uuid4()}"
        job_id = ended_job(store, f"https://localhost:{good.port}{path}")
        assert settle(store, settings, job_id).status == "delivered"
        [got] = good.at(path)
        verify(got.headers, got.body, SECRET)
        assert got.headers["host"] == f"localhost:{good.port}"
        job_id = ended_job(store, f"https://localhost:{wrong.port}{path}")
        callback = settle(
            store,
            make_settings(
                tmp_path, webhook_attempts=1, webhook_allow="localhost", webhook_ca_file=bundle
            ),
            job_id,
        )
        assert callback.status == "failed" and "CERTIFICATE_VERIFY_FAILED" in callback.last_error
        assert wrong.at(path) == []
    # the default CAs (certifi's) do not know this test CA
    with tls_receiver(ca, "localhost") as untrusted:
        job_id = ended_job(store, f"https://localhost:{untrusted.port}{path}")
        settings = make_settings(tmp_path, webhook_attempts=1, webhook_allow="localhost")
        callback = settle(store, settings, job_id)
        assert callback.status == "failed" and "CERTIFICATE_VERIFY_FAILED" in callback.last_error


def test_a_redirect_is_not_followed(store, receiver, tmp_path):
    settings = make_settings(tmp_path, webhook_attempts=1)
    path = f"/redirect/{uuid.uuid4()}"
    before = len(receiver.at("/ok/redirected"))
    job_id = ended_job(store, receiver.url(path))
    callback = settle(store, settings, job_id)
    assert (callback.status, callback.attempts) == ("failed", 1)
    assert "answered 302 (a redirect to /ok/redirected)" in callback.last_error
    assert "not followed" in callback.last_error
    assert len(receiver.at(path)) == 1
    assert len(receiver.at("/ok/redirected")) == before


def test_a_slow_receiver_times_out(store, receiver, tmp_path):
    settings = make_settings(tmp_path, webhook_attempts=1, webhook_timeout=0.5)
    job_id = ended_job(store, receiver.url(f"/slow/4/{uuid.uuid4()}"))
    started = time.monotonic()
    callback = settle(store, settings, job_id)
    assert time.monotonic() - started < 3.5
    assert callback.status == "failed" and "Timeout" in callback.last_error


def test_the_answer_read_is_bounded(store, receiver, tmp_path):
    settings = make_settings(tmp_path, webhook_attempts=1, webhook_max_response_bytes=100)
    job_id = ended_job(store, receiver.url(f"/big/{uuid.uuid4()}"))
    callback = settle(store, settings, job_id)
    assert callback.status == "failed"
    assert callback.last_error == "the receiver answered 500: " + "x" * 100


def test_a_tenant_without_a_secret_is_refused(store, receiver, tmp_path):
    settings = make_settings(tmp_path)
    path = f"/ok/{uuid.uuid4()}"
    job_id = ended_job(store, receiver.url(path), tenant="bob")
    callback = settle(store, settings, job_id)
    assert callback.status == "refused" and "no webhook secret" in callback.last_error
    assert receiver.at(path) == []


def test_one_attempt_at_a_time_and_only_once_ended(store, tmp_path):
    settings = make_settings(tmp_path)
    record = JobRecord(
        id=str(uuid.uuid4()), tenant="alice", config={}, input_format="torchscript",
        input_bytes=1, callback=Callback(url="https://hooks.example.com/x"),
    )  # fmt: skip
    store.create(record)
    assert store.callbacks_due(utcnow(), 10) == []  # queued: nothing to say yet
    assert outbox.claim_attempt(store, record.id, settings) is None
    store.update(
        record.id, lambda r: r.model_copy(update={"status": "canceled", "finished_at": utcnow()})
    )
    assert store.callbacks_due(utcnow(), 10) == [record.id]
    claimed = outbox.claim_attempt(store, record.id, settings)
    assert claimed is not None and claimed.callback.attempts == 1
    # leased: no second worker takes it meanwhile
    assert outbox.claim_attempt(store, record.id, settings) is None
    assert store.callbacks_due(utcnow(), 10) == []
    # an outcome for an attempt that is not the current one is ignored
    from jobs.webhooks.delivery import Attempt

    assert outbox.record_attempt(store, record.id, 7, Attempt(True), settings) is None
    outbox.record_attempt(store, record.id, 1, Attempt(True), settings)
    assert store.get(record.id).callback.status == "delivered"
    assert store.callbacks_due(utcnow(), 10) == []
    store.delete(record.id)
