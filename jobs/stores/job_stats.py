"""Job statistics kept in the job store: jobs created and finished (by status and tenant), upload
bytes, and the histograms of queue wait and run time, for `GET /metrics`.

Jobs are created by API processes and started and ended by workers, on any number of
machines, so no process sees all the events. Each store therefore adds a change's statistics
in the same transaction as the change itself (`increments` of the old and new record): a count
is never lost or doubled, survives restarts of every process, and any API replica reports the
same totals (aggregate them across replicas with `max`, not `sum`). SQLite keeps them in the
table `job_stats`, Redis in the hash `stats`; both map a field to a number.

A field is a JSON list: `["created", tenant]`, `["upload_bytes", tenant]`, `["finished",
status, tenant]`, and per histogram `[name, *labels, "le", bound]` (the count of observations
whose smallest bucket is `bound`, `"+Inf"` beyond the last), `[name, *labels, "sum"]` and
`[name, *labels, "count"]`; `service/metrics.py` turns the bucket counts into Prometheus's
cumulative ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from jobs.records import JobRecord

#: seconds from submission to the first start (a requeued job's later starts are not counted)
QUEUE_WAIT = "queue_wait_seconds"
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
#: seconds from the (last) start to the end, by final status
DURATION = "duration_seconds"
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 6 * 3600, 24 * 3600)
BUCKETS = {QUEUE_WAIT: QUEUE_WAIT_BUCKETS, DURATION: DURATION_BUCKETS}

SQLITE_SCHEMA = "CREATE TABLE IF NOT EXISTS job_stats (field TEXT PRIMARY KEY, value REAL NOT NULL)"
SQLITE_ADD = (
    "INSERT INTO job_stats (field, value) VALUES (?, ?) "
    "ON CONFLICT (field) DO UPDATE SET value = value + excluded.value"
)
#: the Redis hash under the store's prefix
REDIS_KEY = "stats"


def field(*parts: str) -> str:
    return json.dumps(parts)


def bucket_of(value: float, bounds: tuple[float, ...]) -> str:
    """The smallest bound >= value, as Prometheus writes it (`+Inf` beyond the last)."""
    for bound in bounds:
        if value <= bound:
            return repr(float(bound))
    return "+Inf"


def observe(name: str, labels: tuple[str, ...], value: float) -> list[tuple[str, float]]:
    value = max(0.0, value)  # clocks of different machines may disagree a little
    return [
        (field(name, *labels, "le", bucket_of(value, BUCKETS[name])), 1.0),
        (field(name, *labels, "sum"), value),
        (field(name, *labels, "count"), 1.0),
    ]


def increments(old: JobRecord | None, new: JobRecord | None) -> list[tuple[str, float]]:
    """What changing the stored record from `old` to `new` adds (None: created / deleted)."""
    if new is None:
        return []  # a deleted job's counts stay
    out: list[tuple[str, float]] = []
    if old is None:
        out += [(field("created", new.tenant), 1.0)]
        out += [(field("upload_bytes", new.tenant), float(new.input_bytes))]
    started = new.status == "running" and (old is None or old.status != "running")
    if started and new.attempts == 1 and new.started_at is not None:
        out += observe(QUEUE_WAIT, (), (new.started_at - new.created_at).total_seconds())
    if new.terminal and (old is None or not old.terminal):
        out.append((field("finished", new.status, new.tenant), 1.0))
        if new.started_at is not None and new.finished_at is not None:
            ran = (new.finished_at - new.started_at).total_seconds()
            out += observe(DURATION, (new.status,), ran)
    return out


def add_sqlite(conn, old: JobRecord | None, new: JobRecord | None) -> None:
    """Inside the caller's transaction."""
    for name, amount in increments(old, new):
        conn.execute(SQLITE_ADD, (name, amount))


def add_redis(pipe, key: str, old: JobRecord | None, new: JobRecord | None) -> None:
    """Queued into the caller's MULTI."""
    for name, amount in increments(old, new):
        pipe.hincrbyfloat(key, name, amount)


def parse(rows: Iterable[tuple[str, float | str]]) -> dict[tuple[str, ...], float]:
    """Stored fields -> {parts: value}; fields this release does not know are skipped."""
    stats: dict[tuple[str, ...], float] = {}
    for name, value in rows:
        try:
            parts = json.loads(name)
            number = float(value)
        except (TypeError, ValueError):
            continue
        strings = isinstance(parts, list) and all(isinstance(p, str) for p in parts)
        if strings and math.isfinite(number):
            stats[tuple(parts)] = number
    return stats
