"""jobs/logs.py: the scope of a request or job, and the JSON line format."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading

from jobs.logs import JsonFormatter, ScopeFilter, bind, current, log_scope


def line(message: str, exc_info=None) -> dict:
    record = logging.LogRecord("worker", logging.INFO, __file__, 1, message, (), exc_info)
    ScopeFilter().filter(record)
    return json.loads(JsonFormatter().format(record))


def test_fields_of_the_scope_are_on_every_line_and_gone_after_it():
    assert "job_id" not in line("outside")
    with log_scope(job_id="j1", tenant="alice"):
        assert line("inside") | {"time": None} == {
            "time": None, "level": "info", "logger": "worker", "message": "inside",
            "job_id": "j1", "tenant": "alice",
        }  # fmt: skip
        with log_scope(request_id="r1"):  # nested: the outer fields stay
            assert (current("request_id"), current("job_id")) == ("r1", "j1")
        assert current("request_id") is None
    assert current("job_id") is None and "tenant" not in line("after")


def test_bind_in_a_worker_thread_reaches_the_request():
    """FastAPI runs sync dependencies in a thread with a copy of the context: what they bind
    must still be on the request's later lines (uvicorn's access line)."""
    with log_scope(request_id="r2"):
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(bind,), kwargs={"job_id": "j2"})
        thread.start()
        thread.join()
        assert line("access")["job_id"] == "j2"
    bind(job_id="nowhere")  # no scope: nothing to add to, and no error
    assert current("job_id") is None


def test_exceptions_and_odd_text_stay_one_json_line():
    try:
        raise ValueError("boom")
    except ValueError:
        fields = line('quote " and\nnewline', sys.exc_info())
    assert fields["message"] == 'quote " and\nnewline'
    assert "ValueError: boom" in fields["exception"]
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a\nb", (), None)
    assert "\n" not in JsonFormatter().format(record)
