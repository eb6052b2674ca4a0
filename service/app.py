"""The FastAPI application factory: `create_app(settings)`; `service.app:app` for uvicorn."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from jobs.queue import JobQueue
from jobs.settings import Settings
from jobs.stores import open_job_store
from jobs.stores.artifacts import ArtifactStore
from service import problems
from service.metrics import Metrics, MetricsMiddleware
from service.ratelimit import make_rate_limiter
from service.request_id import RequestIdMiddleware
from service.routes import health, jobs, prune
from synflow import __version__


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logging.getLogger("service").setLevel(settings.log_level.upper())
    # /docs and /redoc from assets in the fastapi-offline package (no CDN: they load offline);
    # no validator badge either, which Swagger UI would fetch from validator.swagger.io
    app = FastAPIOffline(
        swagger_ui_parameters={"validatorUrl": None},
        title="SynFlow pruning service",
        version=__version__,
        description="Upload a TorchScript or ONNX model, get it pruned at initialisation "
        "(Iterative Synaptic Flow Pruning), download masks, weights, model and report.",
    )
    app.state.settings = settings
    app.state.jobs = open_job_store(settings)
    try:
        app.state.jobs.ensure_indexes()
    except Exception:  # the store is down: /readyz says so; a worker indexes it later
        logging.getLogger("service").exception("could not check the job store's indexes")
    app.state.artifacts = ArtifactStore(settings.artifacts_path)
    app.state.artifacts.remove_stale_uploads()
    app.state.queue = JobQueue(settings)
    app.state.rate_limiter = make_rate_limiter(settings)
    app.state.metrics = Metrics(app.state.jobs, settings.artifacts_path)
    problems.install(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestIdMiddleware)  # the outermost: every response and line has it
    app.include_router(prune.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    return app


def __getattr__(name: str):
    """`uvicorn service.app:app` builds the app from the environment on first access."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
