"""Job store in one SQLite file (embedded mode): survives restarts, needs no server.

One connection per thread and process (connections do not survive a fork); WAL so readers never
wait for the worker's writes; `BEGIN IMMEDIATE` makes `update` and `claim_next` atomic
read-modify-writes. Besides the record (`data`, JSON), each row carries the columns the
indexes need: status, the bytes it holds, when it ended and when its webhook is due (epoch
seconds); `turns` holds the
round-robin turn of each tenant (jobs/scheduling.py).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import datetime
from pathlib import Path

from jobs.records import JobRecord
from jobs.scheduling import pick_tenant
from jobs.stores import Change, TenantUsage, job_stats
from jobs.stores.private import create_private_file, private_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, seq);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
CREATE TABLE IF NOT EXISTS turns (tenant TEXT PRIMARY KEY, turn INTEGER NOT NULL);
"""
#: columns added after the first release; a store file without them is migrated on open
_ADDED_COLUMNS = {
    "input_bytes": "INTEGER NOT NULL DEFAULT 0",
    "artifact_bytes": "INTEGER NOT NULL DEFAULT 0",
    "finished": "REAL",
    "callback_due": "REAL",
}
_BACKFILL = """
UPDATE jobs SET
    input_bytes = CASE WHEN json_extract(data, '$.input_held') = 0 THEN 0
                       ELSE COALESCE(json_extract(data, '$.input_bytes'), 0) END,
    artifact_bytes = COALESCE(json_extract(data, '$.artifact_bytes'), 0),
    finished = (julianday(json_extract(data, '$.finished_at')) - 2440587.5) * 86400.0
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, tenant, seq);
CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs (finished) WHERE finished IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_usage ON jobs (tenant, status, input_bytes, artifact_bytes);
CREATE INDEX IF NOT EXISTS jobs_by_callback ON jobs (callback_due) WHERE callback_due IS NOT NULL;
"""
_COLUMNS = (
    "status = ?, data = ?, input_bytes = ?, artifact_bytes = ?, finished = ?, callback_due = ?"
)


def _values(record: JobRecord) -> tuple:
    finished = record.finished_at.timestamp() if record.finished_at is not None else None
    due = record.callback_due
    return (
        record.status,
        record.model_dump_json(),
        record.stored_input_bytes,
        record.artifact_bytes,
        finished,
        due.timestamp() if due is not None else None,
    )


class SqliteJobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        private_dir(self.path.parent)
        create_private_file(self.path)  # SQLite gives its -wal and -shm files the same mode
        self._local = threading.local()
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(job_stats.SQLITE_SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            missing = {k: v for k, v in _ADDED_COLUMNS.items() if k not in have}
            for name, kind in missing.items():
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            if missing:
                conn.execute(_BACKFILL)
            for statement in _INDEXES.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def ensure_indexes(self) -> None:
        """Nothing to do: opening the file migrated it."""

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @staticmethod
    def _load(row: tuple[int, str] | None) -> JobRecord | None:
        if row is None:
            return None
        record = JobRecord.model_validate_json(row[1])
        return record.model_copy(update={"seq": row[0]})

    def create(self, record: JobRecord) -> JobRecord:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                "INSERT INTO jobs (id, tenant, status, data, input_bytes, artifact_bytes, "
                "finished, callback_due) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.tenant, *_values(record)),
            )
            job_stats.add_sqlite(conn, None, record)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return record.model_copy(update={"seq": cur.lastrowid})

    def get(self, job_id: str) -> JobRecord | None:
        row = self._connect().execute("SELECT seq, data FROM jobs WHERE id = ?", (job_id,))
        return self._load(row.fetchone())

    def list(self, tenant: str, limit: int, before_seq: int | None = None) -> list[JobRecord]:
        rows = self._connect().execute(
            "SELECT seq, data FROM jobs WHERE tenant = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (tenant, before_seq if before_seq is not None else 2**62, limit),
        )
        return [r for r in map(self._load, rows.fetchall()) if r is not None]

    def _apply(self, conn: sqlite3.Connection, current: JobRecord, change: Change) -> JobRecord:
        new = change(current)
        if new is None:
            return current
        conn.execute(f"UPDATE jobs SET {_COLUMNS} WHERE id = ?", (*_values(new), current.id))
        job_stats.add_sqlite(conn, current, new)
        return new

    def update(self, job_id: str, change: Change) -> JobRecord | None:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = self._load(
                conn.execute("SELECT seq, data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            )
            if current is not None:
                current = self._apply(conn, current, change)
            conn.execute("COMMIT")
            return current
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def claim_next(self, change: Change, max_running: int) -> JobRecord | None:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")  # one writer at a time: pick and claim are one step
        try:
            heads = dict(conn.execute(
                "SELECT tenant, MIN(seq) FROM jobs WHERE status = 'queued' GROUP BY tenant"
            ).fetchall())  # fmt: skip
            running = dict(conn.execute(
                "SELECT tenant, COUNT(*) FROM jobs WHERE status = 'running' GROUP BY tenant"
            ).fetchall())  # fmt: skip
            turns = dict(conn.execute("SELECT tenant, turn FROM turns").fetchall())
            tenant = pick_tenant(heads, running, turns, max_running)
            new = None
            if tenant is not None:
                row = conn.execute("SELECT seq, data FROM jobs WHERE seq = ?", (heads[tenant],))
                current = self._load(row.fetchone())
                assert current is not None
                new = self._apply(conn, current, change)
                if new.status == "running":
                    conn.execute(
                        "INSERT INTO turns (tenant, turn) "
                        "VALUES (?, (SELECT COALESCE(MAX(turn), 0) + 1 FROM turns)) "
                        "ON CONFLICT (tenant) DO UPDATE SET turn = excluded.turn",
                        (tenant,),
                    )
            conn.execute("COMMIT")
            return new
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def delete(self, job_id: str) -> bool:
        return self._connect().execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def running(self) -> list[JobRecord]:
        rows = self._connect().execute("SELECT seq, data FROM jobs WHERE status = 'running'")
        return [r for r in map(self._load, rows.fetchall()) if r is not None]

    _USAGE = (
        "SELECT tenant, SUM(status = 'queued'), SUM(status = 'running'), SUM(input_bytes), "
        "SUM(artifact_bytes) FROM jobs"
    )

    @staticmethod
    def _usage(row: tuple) -> TenantUsage:
        return TenantUsage(*(int(v or 0) for v in row[1:]))

    def usage(self, tenant: str) -> TenantUsage:
        row = self._connect().execute(f"{self._USAGE} WHERE tenant = ?", (tenant,)).fetchone()
        return self._usage(row)

    def usage_by_tenant(self) -> dict[str, TenantUsage]:
        rows = self._connect().execute(f"{self._USAGE} GROUP BY tenant").fetchall()
        usage = {row[0]: self._usage(row) for row in rows}
        return {t: u for t, u in usage.items() if u.active or u.stored_bytes}

    def finished_before(self, cutoff: datetime, limit: int) -> list[str]:
        rows = self._connect().execute(
            "SELECT id FROM jobs WHERE finished IS NOT NULL AND finished < ? "
            "ORDER BY finished LIMIT ?",
            (cutoff.timestamp(), limit),
        )
        return [row[0] for row in rows.fetchall()]

    def stats(self) -> dict[tuple[str, ...], float]:
        rows = self._connect().execute("SELECT field, value FROM job_stats").fetchall()
        return job_stats.parse(rows)

    def callbacks_due(self, now: datetime, limit: int) -> list[str]:
        rows = self._connect().execute(
            "SELECT id FROM jobs WHERE callback_due IS NOT NULL AND callback_due <= ? "
            "ORDER BY callback_due LIMIT ?",
            (now.timestamp(), limit),
        )
        return [row[0] for row in rows.fetchall()]

    def ping(self) -> None:
        self._connect().execute("SELECT 1").fetchone()
