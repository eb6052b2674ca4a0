"""`POST /prune`: receive a model and a request, store them, queue a job (202 + Location)."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from jobs import lifecycle, logs
from jobs.job_object import JobOut
from jobs.records import Callback, JobRecord
from jobs.settings import Settings
from jobs.webhooks.target import CallbackRefused, check_url
from service import quotas
from service.deps import ArtifactStoreDep, CurrentTenant, JobStoreDep, QueueDep, SettingsDep
from service.problems import ProblemError, invalid_request, problem_responses
from service.ratelimit import retry_after
from service.uploads import CALIBRATION_PART, MODEL_PART, receive_prune_form

# torch-free parts of the engine: the request model, and format detection by content
from synflow import boundedjson
from synflow.config import PruneConfig
from synflow.errors import SynflowError
from synflow.inputs import InputSpec
from synflow.io.calibration import (
    CalibrationInfo,
    check_method_data,
    inspect_calibration,
    match_inputs,
)
from synflow.io.formats import detect_format, format_spec
from synflow.scorers.registry import scorer_spec

log = logging.getLogger("service")
router = APIRouter(tags=["prune"])

CONFIG_PART = "config"
#: where the job object is POSTed when the job ends (a form field, or a key of `config`)
CALLBACK_FIELD = "callback_url"
#: the repeated form field `input` (one per forward argument) is the config's `inputs`
INPUT_FIELD = "input"

#: the multipart body as OpenAPI describes it: the file plus the request, as form fields named
#: like PruneConfig's fields (or one JSON part `config`); the body is read by a streaming parser,
#: not by FastAPI, so this schema is written out here
PRUNE_FORM_SCHEMA = {
    "type": "object",
    "required": [MODEL_PART],
    "properties": {
        MODEL_PART: {"type": "string", "format": "binary", "description": "the model file"},
        CALIBRATION_PART: {
            "type": "string",
            "format": "binary",
            "description": "safetensors with `inputs` (batch first) and `labels` (int64 class "
            "indices): the data of the data-driven methods (snip, grasp)",
        },
        CONFIG_PART: {"type": "string", "description": "the request as one JSON object"},
        **{
            name: {"type": "string", "description": field.description or name}
            for name, field in PruneConfig.model_fields.items()
        },
        CALLBACK_FIELD: {
            "type": "string",
            "format": "uri",
            "description": "optional http(s) URL: when the job ends, its job object is POSTed "
            "there, signed per Standard Webhooks (webhook-id, webhook-timestamp, "
            "webhook-signature) with the tenant's secret; the delivery shows as `callback` in "
            "the job. Public addresses only, unless the operator allows others",
        },
        INPUT_FIELD: {
            "type": "array",
            "items": {"type": "string"},
            "description": "repeat once per forward argument, in order: [dtype:]d0,d1,... "
            "(e.g. int64:1,128); the form-field spelling of `inputs`",
        },
    },
}


def parse_config(
    fields: dict[str, str], repeated: dict[str, list[str]] | None = None
) -> tuple[PruneConfig, str | None]:
    """The request from form fields (the repeated `input` ones included), or from one JSON
    `config` part (not both): the pruning config, and the `callback_url` if one is given."""
    repeated = repeated or {}
    data: Any = dict(fields)
    if INPUT_FIELD in repeated:
        if "inputs" in fields:
            raise ProblemError(
                422, "invalid_request", "Invalid prune request",
                "give the inputs either as repeated `input` fields or as one `inputs` field, "
                "not both",
            )  # fmt: skip
        data["inputs"] = repeated[INPUT_FIELD]
    if CONFIG_PART in fields:
        others = sorted((set(fields) | set(repeated)) - {CONFIG_PART})
        if others:
            raise ProblemError(
                422,
                "invalid_request",
                "Invalid prune request",
                "give the options either as form fields or as one JSON `config` part, not "
                f"both (also got: {', '.join(others)})",
            )
        try:
            data = boundedjson.loads(fields[CONFIG_PART], "the `config` part")
        except json.JSONDecodeError as exc:
            raise ProblemError(
                422, "invalid_request", "Invalid prune request",
                f"the `config` part is not valid JSON ({exc.msg} at position {exc.pos})",
            ) from exc  # fmt: skip
        except ValueError as exc:  # too deeply nested, or an integer too long to read
            raise ProblemError(422, "invalid_request", "Invalid prune request", str(exc)) from exc
        if not isinstance(data, dict):
            raise ProblemError(
                422, "invalid_request", "Invalid prune request",
                'the `config` part must be a JSON object, e.g. {"sparsity": 0.9}',
            )  # fmt: skip
    callback_url = data.pop(CALLBACK_FIELD, None)
    if callback_url is not None and not isinstance(callback_url, str):
        raise ProblemError(
            422, "invalid_callback_url", "Invalid callback URL",
            "callback_url must be a string, e.g. https://hooks.example.com/synflow",
        )  # fmt: skip
    try:
        return PruneConfig.model_validate(data), callback_url
    except ValidationError as exc:
        raise invalid_request(exc, "prune request") from exc


def callback_for(tenant: str, url: str | None, settings: Settings) -> Callback | None:
    """The job's webhook, if asked for; 422 for a URL the service will not call, or a tenant
    it has no secret to sign for."""
    if url is None:
        return None
    if tenant not in settings.webhook_secrets:
        raise ProblemError(
            422, "webhooks_not_configured", "Webhooks not configured",
            f"this service has no webhook secret for tenant {tenant!r}, so it cannot sign "
            "callbacks; leave out callback_url and poll the job, or ask the operator to set "
            "one (SYNFLOW_WEBHOOK_SECRETS)",
        )  # fmt: skip
    try:
        check_url(url, settings.webhook_allow_list, settings.webhook_url_max_length)
    except CallbackRefused as exc:
        raise ProblemError(422, "invalid_callback_url", "Invalid callback URL", str(exc)) from exc
    return Callback(url=url)


def checked_method_data(config: PruneConfig, info: CalibrationInfo | None) -> None:
    try:
        check_method_data(scorer_spec(config.method), info)
    except SynflowError as exc:
        raise ProblemError(422, exc.code, "Invalid calibration data", exc.message) from exc


def checked_calibration(
    path: Path, config: PruneConfig, settings: Settings
) -> tuple[InputSpec, ...]:
    """The calibration file's header checked (never its tensors: bounded reads only), against
    the method and the request's inputs; the run's input specs (the batch's own when the
    request gives none)."""
    try:
        info = inspect_calibration(path, settings.input_limits().calibration)
    except SynflowError as exc:
        raise ProblemError(422, exc.code, "Invalid calibration data", exc.message) from exc
    checked_method_data(config, info)
    try:
        return match_inputs(info.spec, config.input_specs)
    except SynflowError as exc:
        raise ProblemError(422, exc.code, "Invalid calibration data", exc.message) from exc


@router.post(
    "/prune",
    status_code=202,
    response_model=JobOut,
    summary="Upload a model and queue a pruning job",
    responses=problem_responses(400, 401, 413, 415, 422, 429, 503),
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": PRUNE_FORM_SCHEMA}}}},
)  # fmt: skip
async def submit(
    request: Request,
    tenant: CurrentTenant,
    settings: SettingsDep,
    jobs: JobStoreDep,
    artifacts: ArtifactStoreDep,
    queue: QueueDep,
) -> JSONResponse:
    wait = await run_in_threadpool(request.app.state.rate_limiter.take, tenant)
    if wait > 0:
        raise ProblemError(
            429, "rate_limited", "Too many requests",
            f"this API key may submit {settings.rate_limit_per_minute:g} jobs per minute "
            f"(bursts of {settings.rate_limit_burst}); retry after {retry_after(wait)} s",
            headers={"Retry-After": retry_after(wait)},
        )  # fmt: skip
    usage = await run_in_threadpool(jobs.usage, tenant)
    quotas.check_active_jobs(usage, settings)
    quotas.check_storage(usage, settings)
    job_id = str(uuid.uuid4())
    logs.bind(job_id=job_id)
    upload = artifacts.upload_path(job_id)
    calibration_upload = artifacts.calibration_upload_path(job_id)
    try:
        form = await receive_prune_form(
            request,
            upload,
            settings.max_upload_bytes,
            calibration_upload,
            settings.max_calibration_bytes,
        )
        quotas.check_storage(usage, settings, form.model_bytes + form.calibration_bytes)
        if not form.has_model:
            raise ProblemError(
                422, "missing_model", "Missing model",
                f"attach the model file as the multipart part `{MODEL_PART}` "
                "(curl -F model=@model.pt ...)",
            )  # fmt: skip
        config, callback_url = parse_config(form.fields, form.repeated)
        callback = callback_for(tenant, callback_url, settings)
        specs = config.input_specs
        if form.has_calibration:
            specs = await run_in_threadpool(
                checked_calibration, calibration_upload, config, settings
            )
        else:
            checked_method_data(config, None)
        try:
            # the directory only (bounded reads, nothing inflated), against the operator's
            # limits; inflation happens in the sandboxed child
            fmt = await run_in_threadpool(detect_format, upload, settings.input_limits().archive)
        except SynflowError as exc:
            raise ProblemError(422, exc.code, "Invalid model", exc.message) from exc
        spec = format_spec(fmt)
        if not spec.states_inputs and specs is None:
            raise ProblemError(
                422, "missing_inputs", "Missing inputs",
                f"the inputs are required for {spec.title} models (the file does not state "
                "them); add e.g. -F input_shape=1,3,224,224 (batch first), or one -F input=SPEC "
                "per forward argument, e.g. -F input=int64:1,128",
            )  # fmt: skip
        await run_in_threadpool(artifacts.adopt_upload, job_id)
    finally:
        upload.unlink(missing_ok=True)
        calibration_upload.unlink(missing_ok=True)

    record = JobRecord(
        id=job_id,
        tenant=tenant,
        config=config.normalized(),
        input_format=fmt,
        input_bytes=form.model_bytes + form.calibration_bytes,
        callback=callback,
    )
    record = await run_in_threadpool(jobs.create, record)
    try:
        await run_in_threadpool(queue.enqueue, job_id)
    except Exception as exc:
        log.exception("could not queue job %s", job_id)
        failed = lifecycle.problem(
            "queue_unavailable", "Queue unavailable", "the job could not be queued", 503
        )
        await run_in_threadpool(lifecycle.fail_unqueued, jobs, job_id, failed)
        await run_in_threadpool(artifacts.delete, job_id)
        raise ProblemError(
            503, "queue_unavailable", "Service unavailable",
            "the job queue cannot be reached; try again shortly", headers={"Retry-After": "5"},
        ) from exc  # fmt: skip
    return JSONResponse(
        JobOut.of(record).model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/jobs/{job_id}"},
    )
