"""Job stores (SQLite and real Redis) and the status transitions built on them."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest

from jobs import lifecycle
from jobs.records import JobRecord, utcnow
from jobs.stores.redis_jobs import RedisJobStore
from jobs.stores.sqlite_jobs import SqliteJobStore
from tests.service.harness import REDIS_URL, drop_redis_keys, redis_settings


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield SqliteJobStore(tmp_path / "jobs.sqlite3")
        return
    prefix = redis_settings()["redis_prefix"]
    yield RedisJobStore(REDIS_URL, prefix)
    drop_redis_keys(prefix)


def new(store, tenant="t1") -> JobRecord:
    record = JobRecord(id=str(uuid.uuid4()), tenant=tenant, config={"sparsity": 0.5},
                       input_format="torchscript", input_bytes=10)  # fmt: skip
    return store.create(record)


def test_create_get_delete(store):
    record = new(store)
    assert record.seq > 0
    assert store.get(record.id) == record
    assert store.get(str(uuid.uuid4())) is None
    assert store.delete(record.id) and store.get(record.id) is None
    assert not store.delete(record.id)
    assert store.list("t1", 10) == []


def test_list_newest_first_by_tenant_with_cursor(store):
    mine = [new(store).id for _ in range(5)]
    new(store, tenant="t2")
    page = store.list("t1", 3)
    assert [r.id for r in page] == mine[::-1][:3]
    rest = store.list("t1", 3, before_seq=page[-1].seq)
    assert [r.id for r in rest] == mine[1::-1]
    assert [r.tenant for r in store.list("t2", 10)] == ["t2"]


def test_update_is_atomic_under_contention(store):
    record = new(store)

    def bump():
        for _ in range(25):
            store.update(record.id, lambda r: r.model_copy(update={"attempts": r.attempts + 1}))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get(record.id).attempts == 100
    assert store.update(str(uuid.uuid4()), lambda r: r) is None


def test_cancel_queued_is_immediate_and_running_is_a_flag(store):
    queued = new(store)
    assert lifecycle.request_cancel(store, queued.id).status == "canceled"
    assert lifecycle.claim(store, queued.id, "w", 60, 3) is None  # its message is dropped

    running = new(store)
    claimed = lifecycle.claim(store, running.id, "w", 60, 3)
    assert claimed.status == "running" and claimed.attempts == 1
    flagged = lifecycle.request_cancel(store, running.id)
    assert flagged.status == "running" and flagged.cancel_requested
    done = lifecycle.finish(store, running.id, claimed.run_id, "canceled")
    assert done.status == "canceled" and done.finished_at is not None
    assert lifecycle.request_cancel(store, running.id).status == "canceled"  # unchanged


def test_only_the_owning_run_can_report(store):
    record = new(store)
    claimed = lifecycle.claim(store, record.id, "w1", 60, 3)
    assert store.running() == [store.get(record.id)]
    # a second delivery while the first worker is alive is a duplicate
    assert lifecycle.claim(store, record.id, "w2", 60, 3) is None
    assert lifecycle.finish(store, record.id, "someone-else", "succeeded") is None
    assert lifecycle.heartbeat(store, record.id, "someone-else", None) is None
    done = lifecycle.finish(store, record.id, claimed.run_id, "succeeded", result={"kept": 1})
    assert done.status == "succeeded" and done.result == {"kept": 1}
    assert store.running() == []
    assert lifecycle.claim(store, record.id, "w2", 60, 3) is None  # finished: never rerun


def test_lost_worker_job_is_requeued_then_fails_after_max_attempts(store):
    record = new(store)
    for attempt in (1, 2):
        claimed = lifecycle.claim(store, record.id, f"w{attempt}", 60, 2)
        assert claimed.attempts == attempt
        assert not lifecycle.requeue_if_stale(store, record.id, 60)  # heartbeat is fresh
        old = utcnow() - timedelta(seconds=120)
        store.update(record.id, lambda r, old=old: r.model_copy(update={"heartbeat_at": old}))
        assert lifecycle.requeue_if_stale(store, record.id, 60)
        requeued = store.get(record.id)
        assert requeued.status == "queued" and requeued.run_id is None
        # the lost worker can no longer report
        assert lifecycle.finish(store, record.id, claimed.run_id, "succeeded") is None
    failed = store.update(record.id, lambda r: None)
    assert failed.status == "queued"
    assert lifecycle.claim(store, record.id, "w3", 60, 2) is None
    failed = store.get(record.id)
    assert failed.status == "failed" and failed.error["code"] == "worker_lost"


def test_stale_running_job_can_be_claimed_by_a_redelivery(store):
    record = new(store)
    lifecycle.claim(store, record.id, "w1", 60, 3)
    old = utcnow() - timedelta(seconds=120)
    store.update(record.id, lambda r: r.model_copy(update={"heartbeat_at": old}))
    again = lifecycle.claim(store, record.id, "w2", 60, 3)
    assert again.worker == "w2" and again.attempts == 2


def test_ping(store):
    store.ping()
