"""What a worker process needs, opened lazily so that each forked pool process gets its own
connections."""

from __future__ import annotations

import os
import socket
from functools import cached_property

from jobs.queue import JobQueue
from jobs.settings import Settings
from jobs.stores import JobStore, open_job_store
from jobs.stores.artifacts import ArtifactStore


class WorkerContext:
    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def jobs(self) -> JobStore:
        return open_job_store(self.settings)

    @cached_property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.settings.artifacts_path)

    @cached_property
    def queue(self) -> JobQueue:
        return JobQueue(self.settings)

    @property
    def name(self) -> str:
        """Who runs a job, as written into its record (host and process)."""
        return f"{socket.gethostname()}:{os.getpid()}"
