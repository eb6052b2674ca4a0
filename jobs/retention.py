"""What the service keeps, and for how long.

- A job's upload is needed only to run it: once the job has ended (succeeded, failed, canceled)
  it is deleted, unless `keep_inputs` is set.
- A finished job (record and artifacts) is deleted `retention` seconds after it ended, by the
  workers' periodic sweep (worker/recovery.py); the stores index jobs by when they ended, so a
  sweep reads only what has expired.

Both keep the bytes a tenant holds (its storage quota, service/quotas.py) up to date.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from jobs.records import JobRecord, utcnow
from jobs.stores import JobStore
from jobs.stores.artifacts import ArtifactStore

log = logging.getLogger("service")

#: most jobs one sweep deletes; the next sweep takes the rest
EXPIRE_BATCH = 500


def release_input(jobs: JobStore, artifacts: ArtifactStore, job_id: str, keep: bool) -> bool:
    """Delete the upload of a job that has ended (not `keep`); True if it was deleted. The
    record says so first, so a crash in between leaves an uncounted file (removed with the job
    at expiry), never a quota charged for a file that is gone."""
    if keep:
        return False

    released: list[bool] = []

    def change(r: JobRecord) -> JobRecord | None:
        released.clear()  # a retried transaction starts afresh
        if not r.terminal or not r.input_held:
            return None
        released.append(True)
        return r.model_copy(update={"input_held": False})

    jobs.update(job_id, change)
    if not released:
        return False
    artifacts.input_path(job_id).unlink(missing_ok=True)
    return True


def expire_finished(jobs: JobStore, artifacts: ArtifactStore, retention: float) -> list[str]:
    """Delete the jobs that ended more than `retention` seconds ago (0: keep them); returns
    their ids. Files go first: a crash in between leaves a record that the next sweep finds."""
    if retention <= 0:
        return []
    expired = jobs.finished_before(utcnow() - timedelta(seconds=retention), EXPIRE_BATCH)
    for job_id in expired:
        artifacts.delete(job_id)
        jobs.delete(job_id)
        log.info("job %s: expired (ended more than %g s ago)", job_id, retention)
    return expired
