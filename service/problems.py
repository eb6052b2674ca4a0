"""RFC 9457 problem documents: every error the API returns is `application/problem+json` with a
`detail` that says what to fix. Client mistakes are 4xx; only our own bugs are 500."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service")

MEDIA_TYPE = "application/problem+json"

#: what each error status means, for the OpenAPI schema
STATUS_DESCRIPTIONS = {
    400: "malformed request body",
    401: "missing or invalid API key",
    404: "no such job for this tenant",
    409: "the job has not succeeded",
    410: "the artifact was removed",
    413: "model file too large, or the tenant's storage quota is full",
    415: "not multipart/form-data",
    422: "invalid request or model",
    429: "too many submissions for this API key (see Retry-After), or too many active jobs",
    503: "a dependency (job store, queue) is unavailable; see Retry-After",
}
PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries: each status answers an RFC 9457 problem document."""
    return {
        status: {
            "description": STATUS_DESCRIPTIONS[status],
            "content": {MEDIA_TYPE: {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(detail)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.headers = headers
        self.extra = extra


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str | None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": f"urn:synflow:problem:{code}", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def validation_errors(exc: ValidationError | RequestValidationError) -> list[dict[str, str]]:
    """[{field, message}] from pydantic's errors, in words a user can act on."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            message = "unknown field; check the spelling against the documented fields"
        out.append({"field": ".".join(loc), "message": message})
    return out


def invalid_request(exc: ValidationError | RequestValidationError, what: str) -> ProblemError:
    errors = validation_errors(exc)
    detail = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"]
                       for e in errors)  # fmt: skip
    return ProblemError(422, "invalid_request", f"Invalid {what}", detail, errors=errors)


def install(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status, exc.code, exc.title, exc.detail, exc.headers, **exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        p = invalid_request(exc, "request")
        return problem_response(p.status, p.code, p.title, p.detail, **p.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed"}
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem_response(
            exc.status_code,
            code,
            titles.get(exc.status_code, "HTTP error"),
            str(exc.detail) if exc.detail else None,
            dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500, "internal_error", "Internal error", "the server failed; this is a bug, not you"
        )
