"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from service.deps import ArtifactStoreDep, JobStoreDep, MetricsAccess, QueueDep
from service.problems import problem_response, problem_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The job store, the artifact store and the broker are reachable",
    responses=problem_responses(503),
)
async def readyz(jobs: JobStoreDep, artifacts: ArtifactStoreDep, queue: QueueDep) -> Response:
    checks = {"job_store": jobs.ping, "artifact_store": artifacts.ping, "broker": queue.ping}
    failed: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await run_in_threadpool(check)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    if failed:
        return problem_response(
            503, "not_ready", "Not ready", "; ".join(f"{k}: {v}" for k, v in failed.items()),
            checks={name: ("failed" if name in failed else "ok") for name in checks},
        )  # fmt: skip
    return Response('{"status":"ready"}', media_type="application/json")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    dependencies=[MetricsAccess],
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **problem_responses(401),
    },
)
def metrics(request: Request) -> Response:
    """Read from the stores at each scrape (service/metrics.py); in the threadpool."""
    return request.app.state.metrics.render()
