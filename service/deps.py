"""Shared request dependencies as `Annotated` aliases: the settings, the stores, the queue, and
the caller's tenant (from `Authorization: Bearer <key>`).

Dependencies that do no I/O are `async` so that FastAPI does not hop to a worker thread for
each of them; the one that reads the job store is sync and runs in the threadpool."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request

from jobs import logs
from jobs.queue import JobQueue
from jobs.records import JobRecord
from jobs.settings import Settings
from jobs.stores import JobStore
from jobs.stores.artifacts import ArtifactStore
from service.problems import ProblemError

DEFAULT_TENANT = "default"


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_job_store(request: Request) -> JobStore:
    return request.app.state.jobs


async def get_artifact_store(request: Request) -> ArtifactStore:
    return request.app.state.artifacts


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
ArtifactStoreDep = Annotated[ArtifactStore, Depends(get_artifact_store)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"}
    )


async def get_tenant(request: Request, settings: SettingsDep) -> str:
    """The tenant whose key the caller presents; with no keys configured, everyone is
    `default` (embedded development mode)."""
    if not settings.api_keys:
        logs.bind(tenant=DEFAULT_TENANT)
        return DEFAULT_TENANT
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("send your API key as `Authorization: Bearer <key>`")
    digest = hashlib.sha256(key.strip().encode()).hexdigest()
    tenant = None
    for name, expected in settings.api_keys.items():  # compare with all, in constant time
        if hmac.compare_digest(digest, expected):
            tenant = name
    if tenant is None:
        raise _unauthorized("the API key is not valid")
    logs.bind(tenant=tenant)
    return tenant


CurrentTenant = Annotated[str, Depends(get_tenant)]


async def check_metrics_access(request: Request, settings: SettingsDep) -> None:
    """`GET /metrics` with `SYNFLOW_METRICS_KEY` set: only its token opens it (the metrics
    cover every tenant, so no tenant's API key does)."""
    if settings.metrics_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send the metrics token as `Authorization: Bearer <token>`")
    digest = hashlib.sha256(token.strip().encode()).hexdigest()
    if not hmac.compare_digest(digest, settings.metrics_key):
        raise _unauthorized("the metrics token is not valid")


MetricsAccess = Depends(check_metrics_access)


def not_found(job_id: str) -> ProblemError:
    return ProblemError(404, "job_not_found", "Job not found", f"there is no job {job_id}")


def get_owned_job(job_id: str, tenant: CurrentTenant, jobs: JobStoreDep) -> JobRecord:
    """The job, if it exists and belongs to the caller; 404 otherwise (also for another
    tenant's job, so ids cannot be probed)."""
    try:
        record = jobs.get(job_id) if _is_uuid(job_id) else None
    except ValueError:
        record = None
    if record is None or record.tenant != tenant:
        raise not_found(job_id)
    logs.bind(job_id=job_id)
    return record


def _is_uuid(text: str) -> bool:
    import uuid

    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


OwnedJob = Annotated[JobRecord, Depends(get_owned_job)]
