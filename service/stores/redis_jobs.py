"""Job store in Redis (production mode), shared by every API and worker process.

Keys (all under the configured prefix): `job:<id>` the record as JSON; `jobs:<tenant>` a sorted
set of the tenant's job ids scored by `seq` (from the counter `seq`) for newest-first listing;
`running` the ids in status running. `update` is an optimistic WATCH/MULTI transaction.
"""

from __future__ import annotations

import os

import redis

from service.schemas import JobRecord
from service.stores import Change


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

    @property
    def _running(self) -> str:
        return f"{self.prefix}running"

    def create(self, record: JobRecord) -> JobRecord:
        seq = int(self.client.incr(f"{self.prefix}seq"))
        record = record.model_copy(update={"seq": seq})
        pipe = self.client.pipeline()
        pipe.set(self._job(record.id), record.model_dump_json(), nx=True)
        pipe.zadd(self._tenant(record.tenant), {record.id: seq})
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
                    if new.status == "running":
                        pipe.sadd(self._running, job_id)
                    else:
                        pipe.srem(self._running, job_id)
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    def delete(self, job_id: str) -> bool:
        record = self.get(job_id)
        if record is None:
            return False
        pipe = self.client.pipeline()
        pipe.delete(self._job(job_id))
        pipe.zrem(self._tenant(record.tenant), job_id)
        pipe.srem(self._running, job_id)
        pipe.execute()
        return True

    def running(self) -> list[JobRecord]:
        records = self._many(sorted(self.client.smembers(self._running)))
        return [r for r in records if r.status == "running"]

    def ping(self) -> None:
        self.client.ping()
