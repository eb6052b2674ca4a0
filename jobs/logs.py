"""Logging of the API and the workers: plain text (default) or one JSON object per line
(`SYNFLOW_LOG_FORMAT=json`), with the fields of what is being handled on every line.

The fields live in a context variable that holds one dict per scope: a request (`request_id`,
set by service/request_id.py; `tenant` and `job_id` bound by the routes) or a job run in a
worker (`job_id`, `tenant`). Binding updates that dict in place, so what a dependency binds in
FastAPI's threadpool is seen by the access log line that uvicorn writes later in the request's
own task. New threads start with no scope (the worker's sweeper logs without a job).
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.config
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

#: the fields a line carries when its scope has them, in this order
CONTEXT_FIELDS = ("request_id", "job_id", "tenant")

_scope: ContextVar[dict[str, str] | None] = ContextVar("synflow_log_scope", default=None)


@contextlib.contextmanager
def log_scope(**fields: str) -> Iterator[None]:
    """A new scope (one request, one job) holding `fields` and those of the scope around it."""
    token = _scope.set({**(_scope.get() or {}), **fields})
    try:
        yield
    finally:
        _scope.reset(token)


def bind(**fields: str) -> None:
    """Add fields to the current scope, for the rest of it (no scope: nothing to add to)."""
    scope = _scope.get()
    if scope is not None:
        scope.update(fields)


def current(name: str) -> str | None:
    scope = _scope.get()
    return scope.get(name) if scope else None


class ScopeFilter(logging.Filter):
    """Copies the scope's fields onto each record (as attributes, for any formatter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_scope.get() or {}).items():
            setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: `time` (UTC, ISO 8601), `level`, `logger`, `message`, the scope's
    fields when present, and `exception` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exception"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def json_logging_config(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` that sends every logger (root, uvicorn's, Celery's) to
    stderr as JSON lines with the scope's fields."""
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "json",
        "filters": ["scope"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"scope": {"()": ScopeFilter}},
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": handler},
        "root": {"handlers": ["json"], "level": level.upper()},
        "loggers": {
            # uvicorn's own config gives these handlers of their own; here they join the root
            name: {"handlers": [], "level": level.upper(), "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_json_logging(level: str) -> None:
    """Send every log line of this process to stderr as JSON (the Celery worker's logging)."""
    logging.config.dictConfig(json_logging_config(level))
    logging.captureWarnings(True)
