"""Job store in one SQLite file (embedded mode): survives restarts, needs no server.

One connection per thread and process (connections do not survive a fork); WAL so readers never
wait for the worker's writes; `BEGIN IMMEDIATE` makes `update` an atomic read-modify-write.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from service.schemas import JobRecord
from service.stores import Change
from service.stores.private import create_private_file, private_dir

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
"""


class SqliteJobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        private_dir(self.path.parent)
        create_private_file(self.path)  # SQLite gives its -wal and -shm files the same mode
        self._local = threading.local()
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

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
        cur = conn.execute(
            "INSERT INTO jobs (id, tenant, status, data) VALUES (?, ?, ?, ?)",
            (record.id, record.tenant, record.status, record.model_dump_json()),
        )
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

    def update(self, job_id: str, change: Change) -> JobRecord | None:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = self._load(
                conn.execute("SELECT seq, data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            )
            if current is None:
                conn.execute("COMMIT")
                return None
            new = change(current)
            if new is not None:
                conn.execute(
                    "UPDATE jobs SET status = ?, data = ? WHERE id = ?",
                    (new.status, new.model_dump_json(), job_id),
                )
                current = new
            conn.execute("COMMIT")
            return current
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def delete(self, job_id: str) -> bool:
        return self._connect().execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def running(self) -> list[JobRecord]:
        rows = self._connect().execute("SELECT seq, data FROM jobs WHERE status = 'running'")
        return [r for r in map(self._load, rows.fetchall()) if r is not None]

    def ping(self) -> None:
        self._connect().execute("SELECT 1").fetchone()
