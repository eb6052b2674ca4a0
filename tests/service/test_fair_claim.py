"""The stores' fair claim (round-robin over tenants, per-tenant running cap, one atomic step),
their usage counters, and their index of ended jobs, on SQLite and on the real Redis."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from datetime import timedelta

import pytest

from jobs import lifecycle
from jobs.records import JobRecord, utcnow
from jobs.scheduling import pick_tenant
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


def new(store, tenant: str, input_bytes: int = 10) -> JobRecord:
    record = JobRecord(id=str(uuid.uuid4()), tenant=tenant, config={"sparsity": 0.5},
                       input_format="torchscript", input_bytes=input_bytes)  # fmt: skip
    return store.create(record)


def take(store, max_running: int = 0, ended=None) -> JobRecord | None:
    return lifecycle.claim_next(store, "w", 60, 3, max_running, ended=ended)


def test_pick_tenant_reference():
    heads, turns = {"a": 1, "b": 5, "c": 3}, {"a": 7, "b": 2}
    assert pick_tenant(heads, {}, turns, 0) == "c"  # never served: first
    assert pick_tenant(heads, {"c": 1}, turns, 1) == "b"  # c at its cap; b before a
    assert pick_tenant(heads, {"b": 1, "c": 1}, turns, 1) == "a"
    assert pick_tenant(heads, {"a": 1, "b": 1, "c": 1}, turns, 1) is None
    assert pick_tenant({"a": 9, "b": 4}, {}, {}, 0) == "b"  # a tie: the older job first
    assert pick_tenant({}, {}, {}, 0) is None


def test_round_robin_over_tenants_oldest_first_within_one(store):
    jobs = {"a": [new(store, "a") for _ in range(5)]}
    jobs["b"] = [new(store, "b") for _ in range(2)]
    jobs["c"] = [new(store, "c")]
    order = []
    while (record := take(store)) is not None:
        order.append(record)
        assert record.status == "running" and record.attempts == 1
    assert [r.tenant for r in order] == ["a", "b", "c", "a", "b", "a", "a", "a"]
    for tenant, records in jobs.items():
        mine = [r.id for r in order if r.tenant == tenant]
        assert mine == [r.id for r in records]  # each tenant's own jobs in submission order


def test_running_cap_per_tenant(store):
    a = [new(store, "a") for _ in range(3)]
    new(store, "b")
    first, second = take(store, 1), take(store, 1)
    assert (first.id, second.tenant) == (a[0].id, "b")
    assert take(store, 1) is None  # both tenants at their cap; a's other jobs wait
    assert store.usage("a").queued == 2 and store.usage("a").running == 1
    lifecycle.finish(store, first.id, first.run_id, "succeeded")
    assert take(store, 1).id == a[1].id
    assert take(store, 2).id == a[2].id  # a higher cap lets a second one run


def test_concurrent_claims_respect_the_cap_and_take_each_job_once(store):
    ids = {new(store, "a").id for _ in range(6)} | {new(store, "b").id for _ in range(6)}
    claimed: list[JobRecord] = []
    lock = threading.Lock()

    def worker():
        record = take(store, 2)
        if record is not None:
            with lock:
                claimed.append(record)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 4  # 2 per tenant, no more
    assert len({r.id for r in claimed}) == 4 and {r.id for r in claimed} <= ids
    assert sorted(r.tenant for r in claimed) == ["a", "a", "b", "b"]
    assert sorted(r.id for r in store.running()) == sorted(r.id for r in claimed)


def test_canceled_and_exhausted_queued_jobs_end_at_claim(store):
    canceled, exhausted, good = new(store, "a"), new(store, "a"), new(store, "a")
    store.update(canceled.id, lambda r: r.model_copy(update={"cancel_requested": True}))
    store.update(exhausted.id, lambda r: r.model_copy(update={"attempts": 3}))
    ended: list[JobRecord] = []
    record = take(store, 1, ended=ended.append)
    assert record.id == good.id
    assert [(r.id, r.status) for r in ended] == [
        (canceled.id, "canceled"),
        (exhausted.id, "failed"),
    ]
    assert store.get(exhausted.id).error["code"] == "worker_lost"


def test_requeued_job_is_claimed_again(store):
    record = new(store, "a")
    first = take(store, 1)
    old = utcnow() - timedelta(seconds=120)
    store.update(record.id, lambda r: r.model_copy(update={"heartbeat_at": old}))
    assert take(store, 1) is None  # still counted as running until requeued
    assert lifecycle.requeue_if_stale(store, record.id, 60)
    again = take(store, 1)
    assert again.id == record.id and again.attempts == 2 and again.run_id != first.run_id


def test_deleted_and_canceled_jobs_leave_the_queue(store):
    gone, canceled = new(store, "a"), new(store, "a")
    store.delete(gone.id)
    lifecycle.request_cancel(store, canceled.id)
    assert take(store) is None
    assert store.usage("a").active == 0


def test_usage_counts_jobs_and_bytes(store):
    a1, a2 = new(store, "a", input_bytes=100), new(store, "a", input_bytes=50)
    new(store, "b", input_bytes=7)
    assert store.usage("a").stored_bytes == 150 and store.usage("a").queued == 2
    running = take(store, 1)
    assert running.id == a1.id
    lifecycle.finish(store, a1.id, running.run_id, "succeeded", artifact_bytes=1000)
    store.update(a1.id, lambda r: r.model_copy(update={"input_held": False}))
    usage = store.usage("a")
    assert (usage.queued, usage.running, usage.input_bytes, usage.artifact_bytes) == (
        1,
        0,
        50,
        1000,
    )
    assert store.usage_by_tenant()["b"].input_bytes == 7
    store.delete(a1.id)
    store.delete(a2.id)
    assert store.usage("a").stored_bytes == 0 and "a" not in store.usage_by_tenant()
    assert store.usage("nobody").active == 0


def test_finished_before_lists_ended_jobs_oldest_first(store):
    records = [new(store, "a") for _ in range(3)]
    now = utcnow()
    for age, record in zip((300, 100, 0), records, strict=True):
        when = now - timedelta(seconds=age)
        store.update(record.id, lambda r, when=when: r.model_copy(
            update={"status": "succeeded", "finished_at": when}))  # fmt: skip
    new(store, "a")  # queued: never listed
    cutoff = now - timedelta(seconds=50)
    assert store.finished_before(cutoff, 10) == [records[0].id, records[1].id]
    assert store.finished_before(cutoff, 1) == [records[0].id]
    store.delete(records[0].id)
    assert store.finished_before(cutoff, 10) == [records[1].id]


def test_sqlite_store_of_an_earlier_release_is_migrated(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
        "tenant TEXT NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL);"
    )
    ended = utcnow() - timedelta(hours=2)
    done = JobRecord(id=str(uuid.uuid4()), tenant="a", config={}, input_format="onnx",
                     input_bytes=40, status="succeeded", finished_at=ended)  # fmt: skip
    waiting = JobRecord(id=str(uuid.uuid4()), tenant="a", config={}, input_format="onnx",
                        input_bytes=2)  # fmt: skip
    for record in (done, waiting):
        data = record.model_dump_json(exclude={"input_held", "artifact_bytes"})
        old.execute("INSERT INTO jobs (id, tenant, status, data) VALUES (?, ?, ?, ?)",
                    (record.id, record.tenant, record.status, data))  # fmt: skip
    old.commit()
    old.close()
    store = SqliteJobStore(path)
    assert store.usage("a").input_bytes == 42 and store.usage("a").queued == 1
    assert store.finished_before(utcnow() - timedelta(hours=1), 10) == [done.id]
    assert take(store).id == waiting.id
    SqliteJobStore(path)  # opening it again changes nothing


def test_redis_records_of_an_earlier_release_are_indexed_once():
    import redis as redis_lib

    prefix = redis_settings()["redis_prefix"]
    client = redis_lib.Redis.from_url(REDIS_URL)
    try:
        ended = utcnow() - timedelta(hours=2)
        done = JobRecord(id=str(uuid.uuid4()), tenant="a", config={}, input_format="onnx",
                         input_bytes=40, status="succeeded", finished_at=ended,
                         artifact_bytes=5, seq=1)  # fmt: skip
        waiting = JobRecord(id=str(uuid.uuid4()), tenant="a", config={}, input_format="onnx",
                            input_bytes=2, seq=2)  # fmt: skip
        for record in (done, waiting):  # as the earlier release wrote them: no indexes
            client.set(f"{prefix}job:{record.id}", record.model_dump_json())
            client.zadd(f"{prefix}jobs:a", {record.id: record.seq})
        store = RedisJobStore(REDIS_URL, prefix)
        assert take(store) is None  # not indexed yet
        store.ensure_indexes()
        usage = store.usage("a")
        assert (usage.queued, usage.input_bytes, usage.artifact_bytes) == (1, 42, 5)
        assert store.finished_before(utcnow() - timedelta(hours=1), 10) == [done.id]
        store.ensure_indexes()  # done once: the counters are not summed again
        assert store.usage("a").input_bytes == 42
        assert take(store).id == waiting.id
    finally:
        drop_redis_keys(prefix)
