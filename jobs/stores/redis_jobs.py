"""Job store in Redis (production mode), shared by every API and worker process.

Keys (all under the configured prefix):

    job:<id>          the record as JSON
    jobs:<tenant>     sorted set of the tenant's job ids by `seq` (from the counter `seq`),
                      for newest-first listing
    running           the ids in status running (every tenant; the sweeper's list)
    queued:<tenant>   sorted set of the tenant's queued job ids by `seq` (its queue, oldest first)
    running:<tenant>  the tenant's running job ids (its count against the running cap)
    usage:<tenant>    hash: `inputs`, `artifacts`: bytes its jobs hold
    tenants           sorted set of tenants by the turn of their last start (round-robin,
                      jobs/scheduling.py), turns from the counter `turn`
    finished          sorted set of ended job ids by when they ended (epoch seconds; expiry)
    stats             hash: job statistics for /metrics (jobs/stores/job_stats.py)
    callbacks         sorted set of ended job ids whose webhook is pending, by when it is due

Records written before these indexes existed (an upgrade) are indexed once, by the first process
that calls `ensure_indexes` (the API and every worker do at start), which then sets `indexes`.

`update` and `delete` are optimistic WATCH/MULTI transactions on the record that move its id
between these indexes in the same MULTI, so the indexes always agree with the records.
`claim_next` reads the indexes, then claims the chosen job in a transaction that also watches
the tenant's running set: a concurrent start of the same tenant's job (or of the same job)
makes it retry, so the cap holds across workers.
"""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import datetime

import redis

from jobs.records import JobRecord
from jobs.scheduling import pick_tenant
from jobs.stores import Change, TenantUsage, job_stats

#: what `indexes` holds once every record is indexed
INDEX_VERSION = "1"
#: seconds one process may take to index an upgraded store before another may try
INDEX_LOCK_SECONDS = 300


class RedisJobStore:
    def __init__(self, url: str, prefix: str):
        self.url = url
        self.prefix = prefix
        self._client: redis.Redis | None = None
        self._pid = 0

    @property
    def client(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():  # a fork needs its own pool
            self._client = redis.Redis.from_url(
                self.url, decode_responses=True, socket_timeout=10, health_check_interval=30
            )
            self._pid = os.getpid()
        return self._client

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _tenant(self, tenant: str) -> str:
        return f"{self.prefix}jobs:{tenant}"

    def _queued(self, tenant: str) -> str:
        return f"{self.prefix}queued:{tenant}"

    def _running_of(self, tenant: str) -> str:
        return f"{self.prefix}running:{tenant}"

    def _usage_of(self, tenant: str) -> str:
        return f"{self.prefix}usage:{tenant}"

    @property
    def _running(self) -> str:
        return f"{self.prefix}running"

    @property
    def _tenants(self) -> str:
        return f"{self.prefix}tenants"

    @property
    def _finished(self) -> str:
        return f"{self.prefix}finished"

    @property
    def _stats(self) -> str:
        return f"{self.prefix}{job_stats.REDIS_KEY}"

    @property
    def _callbacks(self) -> str:
        return f"{self.prefix}callbacks"

    def _reindex(
        self, pipe, old: JobRecord | None, new: JobRecord | None, usage: bool = True
    ) -> None:
        """Queue into `pipe` what moves a job's id from `old`'s indexes to `new`'s (and, with
        `usage`, the change of the bytes its tenant holds and of the job statistics)."""
        record = new or old
        assert record is not None
        job_id, tenant = record.id, record.tenant
        if old is not None and (new is None or old.status != new.status):
            if old.status == "queued":
                pipe.zrem(self._queued(tenant), job_id)
            elif old.status == "running":
                pipe.srem(self._running, job_id)
                pipe.srem(self._running_of(tenant), job_id)
        if new is not None and (old is None or old.status != new.status):
            if new.status == "queued":
                pipe.zadd(self._queued(tenant), {job_id: new.seq})
            elif new.status == "running":
                pipe.sadd(self._running, job_id)
                pipe.sadd(self._running_of(tenant), job_id)
        ended = (old.finished_at if old else None), (new.finished_at if new else None)
        if ended[1] is not None and ended[1] != ended[0]:
            pipe.zadd(self._finished, {job_id: ended[1].timestamp()})
        elif ended[1] is None and ended[0] is not None:
            pipe.zrem(self._finished, job_id)
        due = (old.callback_due if old else None), (new.callback_due if new else None)
        if due[1] is not None and due[1] != due[0]:
            pipe.zadd(self._callbacks, {job_id: due[1].timestamp()})
        elif due[1] is None and due[0] is not None:
            pipe.zrem(self._callbacks, job_id)
        for field, size in (("inputs", "stored_input_bytes"), ("artifacts", "artifact_bytes")):
            if not usage:
                break
            delta = (getattr(new, size) if new else 0) - (getattr(old, size) if old else 0)
            if delta:
                pipe.hincrby(self._usage_of(tenant), field, delta)
        if usage:
            job_stats.add_redis(pipe, self._stats, old, new)

    def ensure_indexes(self) -> None:
        """Index every record once, if this store predates the indexes; the bytes per tenant
        are summed afresh from the records."""
        marker = f"{self.prefix}indexes"
        if self.client.get(marker) == INDEX_VERSION:
            return
        lock = f"{marker}:lock"
        if not self.client.set(lock, os.getpid(), nx=True, ex=INDEX_LOCK_SECONDS):
            return  # another process is at it
        try:
            held: dict[str, dict[str, int]] = defaultdict(lambda: {"inputs": 0, "artifacts": 0})
            pipe = self.client.pipeline(transaction=False)
            keys = list(self.client.scan_iter(match=f"{self.prefix}job:*", count=1000))
            for start in range(0, len(keys), 1000):
                for data in self.client.mget(keys[start : start + 1000]):
                    if not data:
                        continue
                    record = JobRecord.model_validate_json(data)
                    pipe.zadd(self._tenants, {record.tenant: 0}, nx=True)
                    self._reindex(pipe, None, record, usage=False)
                    held[record.tenant]["inputs"] += record.stored_input_bytes
                    held[record.tenant]["artifacts"] += record.artifact_bytes
            for tenant, sizes in held.items():
                pipe.hset(self._usage_of(tenant), mapping=sizes)
            pipe.set(marker, INDEX_VERSION)
            pipe.execute()
        finally:
            self.client.delete(lock)

    def create(self, record: JobRecord) -> JobRecord:
        seq = int(self.client.incr(f"{self.prefix}seq"))
        record = record.model_copy(update={"seq": seq})
        pipe = self.client.pipeline()
        pipe.set(self._job(record.id), record.model_dump_json(), nx=True)
        pipe.zadd(self._tenant(record.tenant), {record.id: seq})
        pipe.zadd(self._tenants, {record.tenant: 0}, nx=True)
        self._reindex(pipe, None, record)
        pipe.execute()
        return record

    def get(self, job_id: str) -> JobRecord | None:
        data = self.client.get(self._job(job_id))
        return JobRecord.model_validate_json(data) if data else None

    def _many(self, ids: list[str]) -> list[JobRecord]:
        if not ids:
            return []
        values = self.client.mget([self._job(i) for i in ids])
        return [JobRecord.model_validate_json(v) for v in values if v]

    def list(self, tenant: str, limit: int, before_seq: int | None = None) -> list[JobRecord]:
        top = f"({before_seq}" if before_seq is not None else "+inf"
        ids = self.client.zrevrangebyscore(self._tenant(tenant), top, "-inf", start=0, num=limit)
        return self._many(ids)

    def update(self, job_id: str, change: Change) -> JobRecord | None:
        key = self._job(job_id)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    data = pipe.get(key)
                    if not data:
                        pipe.unwatch()
                        return None
                    current = JobRecord.model_validate_json(data)
                    new = change(current)
                    if new is None:
                        pipe.unwatch()
                        return current
                    pipe.multi()
                    pipe.set(key, new.model_dump_json())
                    self._reindex(pipe, current, new)
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    def claim_next(self, change: Change, max_running: int) -> JobRecord | None:
        while True:
            tenants = self.client.zrange(self._tenants, 0, -1, withscores=True)
            reads = self.client.pipeline(transaction=False)
            for tenant, _ in tenants:
                reads.zrange(self._queued(tenant), 0, 0, withscores=True)
                reads.scard(self._running_of(tenant))
            answers = reads.execute()
            heads, first, running = {}, {}, {}
            for i, (tenant, _) in enumerate(tenants):
                head, count = answers[2 * i], answers[2 * i + 1]
                running[tenant] = int(count)
                if head:
                    first[tenant], heads[tenant] = head[0][0], int(head[0][1])
            turns = {tenant: int(turn) for tenant, turn in tenants}
            tenant = pick_tenant(heads, running, turns, max_running)
            if tenant is None:
                return None
            claimed = self._claim(first[tenant], tenant, change, max_running)
            if claimed is not None:
                return claimed
            # the job was taken, or the tenant reached its cap meanwhile: look again

    def _claim(
        self, job_id: str, tenant: str, change: Change, max_running: int
    ) -> JobRecord | None:
        """`change` applied to the queued job `job_id` if its tenant is still below the cap;
        None if either changed since the indexes were read."""
        key, running_of = self._job(job_id), self._running_of(tenant)
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(key, running_of)
                data = pipe.get(key)
                current = JobRecord.model_validate_json(data) if data else None
                if current is None or current.status != "queued":
                    pipe.multi()  # an index entry of a job that is gone or moved on
                    pipe.zrem(self._queued(tenant), job_id)
                    pipe.execute()
                    return None
                if max_running and pipe.scard(running_of) >= max_running:
                    pipe.unwatch()
                    return None
                turn = self.client.incr(f"{self.prefix}turn")
                new = change(current)
                if new is None:
                    pipe.unwatch()
                    return current
                pipe.multi()
                pipe.set(key, new.model_dump_json())
                self._reindex(pipe, current, new)
                if new.status == "running":
                    pipe.zadd(self._tenants, {tenant: turn})
                pipe.execute()
                return new
            except redis.WatchError:
                return None

    def delete(self, job_id: str) -> bool:
        key = self._job(job_id)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    data = pipe.get(key)
                    if not data:
                        pipe.unwatch()
                        return False
                    record = JobRecord.model_validate_json(data)
                    pipe.multi()
                    pipe.delete(key)
                    pipe.zrem(self._tenant(record.tenant), job_id)
                    self._reindex(pipe, record, None)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def running(self) -> list[JobRecord]:
        records = self._many(sorted(self.client.smembers(self._running)))
        return [r for r in records if r.status == "running"]

    def _usage_many(self, tenants: list[str]) -> dict[str, TenantUsage]:
        pipe = self.client.pipeline(transaction=False)
        for tenant in tenants:
            pipe.zcard(self._queued(tenant))
            pipe.scard(self._running_of(tenant))
            pipe.hmget(self._usage_of(tenant), "inputs", "artifacts")
        answers = pipe.execute()
        usage = {}
        for i, tenant in enumerate(tenants):
            queued, running, (inputs, artifacts) = answers[3 * i : 3 * i + 3]
            usage[tenant] = TenantUsage(
                int(queued), int(running), int(inputs or 0), int(artifacts or 0)
            )
        return usage

    def usage(self, tenant: str) -> TenantUsage:
        return self._usage_many([tenant])[tenant]

    def usage_by_tenant(self) -> dict[str, TenantUsage]:
        tenants = self.client.zrange(self._tenants, 0, -1)
        usage = self._usage_many(tenants)
        return {t: u for t, u in usage.items() if u.active or u.stored_bytes}

    def finished_before(self, cutoff: datetime, limit: int) -> list[str]:
        return self.client.zrangebyscore(
            self._finished, "-inf", f"({cutoff.timestamp()}", start=0, num=limit
        )

    def stats(self) -> dict[tuple[str, ...], float]:
        return job_stats.parse(self.client.hgetall(self._stats).items())

    def callbacks_due(self, now: datetime, limit: int) -> list[str]:
        return self.client.zrangebyscore(
            self._callbacks, "-inf", now.timestamp(), start=0, num=limit
        )

    def ping(self) -> None:
        self.client.ping()
