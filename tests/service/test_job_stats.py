"""Job statistics in the job stores (jobs/stores/job_stats.py) and their Prometheus form.

Both stores (SQLite, and a real Redis under a test prefix) go through the real lifecycle:
created, claimed, finished, canceled while queued, failed by the route's enqueue failure, and a
duplicate finish; the counts and histograms are compared with ones computed by hand from the
records' own timestamps."""

from __future__ import annotations

import json
import math
import uuid
from datetime import timedelta

import pytest

from jobs import lifecycle
from jobs.records import JobRecord, utcnow
from jobs.stores import job_stats
from jobs.stores.redis_jobs import RedisJobStore
from jobs.stores.sqlite_jobs import SqliteJobStore
from service.metrics import job_histograms
from tests.service.harness import drop_redis_keys, redis_settings


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield SqliteJobStore(tmp_path / "jobs.sqlite3")
        return
    settings = redis_settings()
    try:
        yield RedisJobStore(settings["redis_url"], settings["redis_prefix"])
    finally:
        drop_redis_keys(settings["redis_prefix"])


def new_job(tenant: str, size: int, age: float = 0.0) -> JobRecord:
    created = utcnow() - timedelta(seconds=age)
    return JobRecord(
        id=str(uuid.uuid4()), tenant=tenant, config={}, input_format="torchscript",
        input_bytes=size, created_at=created,
    )  # fmt: skip


def claim(store, worker: str = "w:1") -> JobRecord:
    record = lifecycle.claim_next(store, worker, 60, 3, 0)
    assert record is not None and record.status == "running"
    return record


def test_counts_follow_the_lifecycle_exactly_once(store):
    a = store.create(new_job("alice", 100, age=3.0))  # waited about 3 s before its start
    b = store.create(new_job("alice", 50))
    c = store.create(new_job("bob", 7))
    running = claim(store)
    assert running.id == a.id
    done = lifecycle.finish(store, a.id, running.run_id, "succeeded")
    assert lifecycle.finish(store, a.id, running.run_id, "failed") is None  # not its run any more
    lifecycle.request_cancel(store, b.id)  # queued: canceled at once, never ran
    store.update(c.id, lambda r: r.model_copy(update={"status": "failed", "finished_at": utcnow()}))
    store.delete(b.id)  # deleting a job keeps its counts

    stats = store.stats()
    assert stats[("created", "alice")] == 2 and stats[("created", "bob")] == 1
    assert stats[("upload_bytes", "alice")] == 150 and stats[("upload_bytes", "bob")] == 7
    finished = {k[1:]: v for k, v in stats.items() if k[0] == "finished"}
    assert finished == {("succeeded", "alice"): 1, ("canceled", "alice"): 1, ("failed", "bob"): 1}

    wait = (running.started_at - a.created_at).total_seconds()
    ran = (done.finished_at - done.started_at).total_seconds()
    assert 3.0 <= wait < 60
    assert stats[(job_stats.QUEUE_WAIT, "count")] == 1
    assert math.isclose(stats[(job_stats.QUEUE_WAIT, "sum")], wait, rel_tol=1e-9)
    bucket = job_stats.bucket_of(wait, job_stats.QUEUE_WAIT_BUCKETS)
    assert stats[(job_stats.QUEUE_WAIT, "le", bucket)] == 1
    # only the job that ran has a duration; neither the canceled nor the failed-unstarted one
    durations = {k: v for k, v in stats.items() if k[0] == job_stats.DURATION}
    assert durations[(job_stats.DURATION, "succeeded", "count")] == 1
    assert math.isclose(durations[(job_stats.DURATION, "succeeded", "sum")], ran, rel_tol=1e-9)
    assert not any(k[1] != "succeeded" for k in durations)


def test_requeued_jobs_wait_once(store):
    a = store.create(new_job("alice", 1))
    first = claim(store)
    store.update(a.id, lambda r: r.model_copy(update={"status": "queued", "run_id": None}))
    second = claim(store)
    assert second.attempts == 2
    lifecycle.finish(store, a.id, second.run_id, "failed")
    stats = store.stats()
    assert stats[(job_stats.QUEUE_WAIT, "count")] == 1  # the second start is no new wait
    assert stats[("finished", "failed", "alice")] == 1
    assert first.run_id != second.run_id


def reference_buckets(values: list[float], bounds) -> list[tuple[str, float]]:
    """Prometheus's cumulative buckets, counted directly from the observations."""
    out = [(repr(float(b)), float(sum(1 for v in values if v <= b))) for b in bounds]
    return [*out, ("+Inf", float(len(values)))]


def test_histograms_are_cumulative_like_prometheus():
    values = [0.05, 0.1, 0.7, 3.0, 59.0, 61.0, 10**6]
    stats: dict[tuple[str, ...], float] = {}
    for value in values:
        for name, amount in job_stats.observe(job_stats.QUEUE_WAIT, (), value):
            key = tuple(json.loads(name))
            stats[key] = stats.get(key, 0.0) + amount
    family = next(
        f for f in job_histograms(stats) if f.name == f"synflow_job_{job_stats.QUEUE_WAIT}"
    )
    buckets = [(s.labels["le"], s.value) for s in family.samples if s.name.endswith("_bucket")]
    expected = reference_buckets(values, job_stats.QUEUE_WAIT_BUCKETS)
    assert [(float(le), v) for le, v in buckets] == [(float(le), v) for le, v in expected]
    total = {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")}
    assert total[f"synflow_job_{job_stats.QUEUE_WAIT}_count"] == len(values)
    assert math.isclose(total[f"synflow_job_{job_stats.QUEUE_WAIT}_sum"], sum(values))


def test_unknown_or_broken_fields_are_skipped():
    rows = [('["created", "a"]', "2"), ("not json", "1"), ('["x", 1]', "1"), ('["y"]', "nan")]
    assert job_stats.parse(rows) == {("created", "a"): 2.0}
