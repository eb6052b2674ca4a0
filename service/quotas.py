"""Per-tenant quotas of `POST /prune`, checked from the job store's indexes (no file walk).

- Active jobs: at most `tenant_max_active_jobs` queued or running; beyond that `429` (the
  tenant waits for its jobs to end, or cancels some).
- Storage: the bytes its jobs hold (uploads still kept plus published artifacts) at most
  `tenant_max_stored_bytes`; a submission that would go beyond gets `413` (the tenant
  deletes finished jobs, or waits for them to expire).

Checked before the upload is read (a tenant at a limit costs the API no upload) and, for the
storage quota, again once its size is known. Concurrent submissions of one tenant may pass
the same check together: the limits are exact up to the requests in flight at once, which the
rate limit bounds.
"""

from __future__ import annotations

from jobs.settings import Settings
from jobs.stores import TenantUsage
from service.problems import ProblemError


def check_active_jobs(usage: TenantUsage, settings: Settings) -> None:
    limit = settings.tenant_max_active_jobs
    if limit and usage.active >= limit:
        raise ProblemError(
            429, "too_many_active_jobs", "Too many active jobs",
            f"this tenant has {usage.queued} jobs queued and {usage.running} running; at most "
            f"{limit} may be queued or running at once. Wait for some to finish, or cancel "
            "some (POST /jobs/{id}/cancel), then submit again",
            active_jobs=usage.active, limit=limit,
        )  # fmt: skip


def check_storage(usage: TenantUsage, settings: Settings, upload_bytes: int = 0) -> None:
    """Refuse when the tenant's stored bytes plus `upload_bytes` exceed its quota (with no
    upload yet: when it is already at the quota)."""
    limit = settings.tenant_max_stored_bytes
    if not limit:
        return
    held = usage.stored_bytes
    if held + upload_bytes > limit or (upload_bytes == 0 and held >= limit):
        what = f"this upload of {upload_bytes} bytes" if upload_bytes else "another upload"
        raise ProblemError(
            413, "storage_quota_exceeded", "Storage quota exceeded",
            f"this tenant's jobs hold {held} bytes of uploads and artifacts and the quota is "
            f"{limit} bytes, so {what} does not fit. Delete jobs you no longer need "
            "(DELETE /jobs/{id}, after downloading their artifacts), or wait for finished "
            f"jobs to expire {_expiry(settings)}, then submit again",
            stored_bytes=held, limit=limit,
        )  # fmt: skip


def _expiry(settings: Settings) -> str:
    if not settings.retention:
        return "(they do not expire here: delete them)"
    return f"({settings.retention:g} s after they end)"
