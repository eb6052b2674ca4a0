"""The caller's jobs: status, listing, cancel, delete, artifact downloads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse

from jobs import lifecycle, retention
from jobs.job_object import JobOut
from jobs.records import ARTIFACTS
from jobs.stores.artifacts import artifact_file
from service.deps import (
    ArtifactStoreDep,
    CurrentTenant,
    JobStoreDep,
    OwnedJob,
    SettingsDep,
    not_found,
)
from service.problems import ProblemError, problem_responses
from service.schemas import JobPage

router = APIRouter(prefix="/jobs", tags=["jobs"])

MEDIA_TYPES = {"report": "application/json", "report.png": "image/png"}
MAX_CURSOR_DIGITS = 18  # a job's sequence number is below 2**62


@router.get(
    "",
    response_model=JobPage,
    summary="The caller's jobs, newest first",
    responses=problem_responses(401, 422),
)
def list_jobs(
    tenant: CurrentTenant,
    jobs: JobStoreDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, description="page size")] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> Response:
    limit = min(limit, settings.page_size_max)
    before = None
    if cursor:
        # ASCII digits only ("²".isdigit() is true), and within the stores' 63-bit range
        if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= MAX_CURSOR_DIGITS):
            raise ProblemError(
                422, "invalid_cursor", "Invalid cursor",
                "cursor must be the `next_cursor` value of a previous page",
            )  # fmt: skip
        before = int(cursor)
    records = jobs.list(tenant, limit + 1, before)
    more = len(records) > limit
    records = records[:limit]
    next_cursor = str(records[-1].seq) if more else None
    links = {"self": f"/jobs?limit={limit}" + (f"&cursor={cursor}" if cursor else "")}
    if next_cursor:
        links["next"] = f"/jobs?limit={limit}&cursor={next_cursor}"
    return json_response(
        JobPage(items=[JobOut.of(r) for r in records], next_cursor=next_cursor, links=links)
    )


def json_response(model: JobOut | JobPage, status_code: int = 200) -> Response:
    """Serialise once, in pydantic-core (polled often: skips FastAPI's re-validation)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="One job's status and result",
    responses=problem_responses(401, 404),
)
async def get_job(job: OwnedJob) -> Response:
    return json_response(JobOut.of(job))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a queued or running job",
    responses={
        202: {"model": JobOut, "description": "a running job is being stopped"},
        **problem_responses(401, 404),
    },
)
def cancel_job(
    job: OwnedJob, jobs: JobStoreDep, artifacts: ArtifactStoreDep, settings: SettingsDep
) -> Response:
    """202 while a running job is being stopped; 200 once the job is final (a finished job is
    left as it is). A queued job ends here: its upload goes (jobs/retention.py)."""
    record = lifecycle.request_cancel(jobs, job.id)
    if record is None:
        raise not_found(job.id)
    if record.terminal:
        retention.release_input(jobs, artifacts, job.id, settings.keep_inputs)
    return json_response(JobOut.of(record), 200 if record.terminal else 202)


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Cancel if needed, then delete job and files",
    responses=problem_responses(401, 404),
)
def delete_job(job: OwnedJob, jobs: JobStoreDep, artifacts: ArtifactStoreDep) -> Response:
    lifecycle.request_cancel(jobs, job.id)
    jobs.delete(job.id)
    artifacts.delete(job.id)
    return Response(status_code=204)


def _download_route(name: str):
    def download(job: OwnedJob, artifacts: ArtifactStoreDep) -> FileResponse:
        if job.status != "succeeded":
            hint = {
                "queued": "it is queued; poll the job until its status is `succeeded`",
                "running": "it is running; poll the job until its status is `succeeded`",
            }.get(job.status, f"it ended `{job.status}` and has no artifacts")
            raise ProblemError(
                409, "job_not_succeeded", "Artifacts not available",
                f"job {job.id} has no {name} yet: {hint}", job_status=job.status,
            )  # fmt: skip
        path = artifacts.artifact_path(job.id, name, job.input_format)
        if not path.is_file():
            raise ProblemError(
                410, "artifact_gone", "Artifact gone", f"the {name} of job {job.id} was removed"
            )
        filename = f"{job.id}-{artifact_file(name, job.input_format)}"
        return FileResponse(
            path, media_type=MEDIA_TYPES.get(name, "application/octet-stream"), filename=filename
        )

    download.__name__ = f"download_{name}"
    return download


for _name in ARTIFACTS:
    router.add_api_route(
        f"/{{job_id}}/{_name}",
        _download_route(_name),
        methods=["GET"],
        summary=f"Download the {_name} of a succeeded job",
        response_class=FileResponse,
        responses=problem_responses(401, 404, 409, 410),
    )
