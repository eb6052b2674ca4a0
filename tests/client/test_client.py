"""`synflow.client` against the real embedded service (uvicorn, Celery worker, SQLite) over
HTTP: the happy path end to end, and every error it can raise."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from synflow.client import (
    UNREACHABLE,
    Client,
    Job,
    JobTimeout,
    ProblemError,
    Progress,
    prune_remote,
)
from tests.client.conftest import BURST, KEYS, LONG, MAX_UPLOAD, SHAPE
from tests.e2e.checks import check_artifacts
from tests.service.harness import REPO_ROOT, small_cnn, wait_until

pytestmark = pytest.mark.slow


def client(service, tenant: str, **kwargs) -> Client:
    return Client(service.url, KEYS[tenant], **kwargs)


def problem(call) -> ProblemError:
    with pytest.raises(ProblemError) as info:
        call()
    err = info.value
    assert "\n" not in str(err)
    return err


def started(c: Client, job_id: str) -> Job:
    return wait_until(lambda: (j := c.get(job_id)).status == "running" and j, 60, "not running")


def test_prune_remote_end_to_end(service, tmp_path):
    dest = tmp_path / "a" / "pruned"  # created, parents too
    pruned = prune_remote(
        service.model, dest, url=service.url, api_key=KEYS["alice"],
        sparsity=0.9, iterations=5, input_shape=SHAPE, progress=False,
    )  # fmt: skip
    job = pruned.job
    assert isinstance(job, Job) and job.status == "succeeded" and job.terminal
    assert isinstance(job.progress, Progress) and job.progress.iteration == 5
    assert job.config["sparsity"] == 0.9 and job.config["input_shape"] == list(SHAPE)
    assert job.finished_at >= job.started_at >= job.created_at
    assert sorted(pruned.files) == ["masks", "model", "report", "report.png", "weights"]
    assert sorted(p.name for p in dest.iterdir()) == [
        "masks.safetensors", "model.pt", "report.json", "report.png", "weights.safetensors"
    ]  # fmt: skip
    assert all(pruned.files[name].parent == dest for name in pruned.files)
    check_artifacts(pruned.files, small_cnn(), job.model_dump(mode="json"))


def test_submit_get_list_pages_cancel_delete(service):
    with client(service, "bob") as c:
        ids = [c.submit(service.model, input_shape=SHAPE, **LONG).id for _ in range(3)]
        try:
            assert c.get(ids[0]).status in ("queued", "running")
            listed = [job.id for job in c.list(page_size=2)]  # two pages
            assert listed == ids[::-1]  # newest first, every job once
            first = c.page(limit=2)
            assert [j.id for j in first.items] == ids[:0:-1] and first.next_cursor
            second = c.page(limit=2, cursor=first.next_cursor)
            assert [j.id for j in second.items] == ids[:1] and second.next_cursor is None
            queued = c.cancel(ids[2])  # the newest waits behind the first: ends at once
            assert queued.status == "canceled" and not queued.cancel_requested
        finally:
            for job_id in ids:
                c.delete(job_id)
        assert list(c.list()) == []
        assert problem(lambda: c.get(ids[0])).status == 404


def test_wait_times_out_and_the_job_goes_on(service):
    with client(service, "carol") as c:
        job = c.submit(service.model, input_shape=SHAPE, **LONG)
        try:
            started_at = time.monotonic()
            with pytest.raises(JobTimeout) as info:
                c.wait(job.id, timeout=1.0, progress=False, interval=0.2)
            assert 1.0 <= time.monotonic() - started_at < 30
            assert info.value.job.id == job.id and info.value.job.status in ("queued", "running")
            assert f"job {job.id} still" in str(info.value)
            started(c, job.id)
            assert c.cancel(job.id).status in ("running", "canceled")  # 202: being stopped
            assert c.wait(job.id, timeout=60, progress=False).status == "canceled"
        finally:
            c.delete(job.id)


def test_download_of_an_unfinished_or_canceled_job_writes_nothing(service, tmp_path):
    dest = tmp_path / "x" / "out"
    with client(service, "dave") as c:
        job = c.submit(service.model, input_shape=SHAPE, **LONG)
        try:
            err = problem(lambda: c.download(job.id, dest))
            assert err.status == 409 and err.code == "job_not_succeeded"
            assert err.problem.job_status in ("queued", "running")
            assert not (tmp_path / "x").exists()
            c.cancel(job.id)
            assert c.wait(job.id, timeout=60, progress=False).status == "canceled"
            err = problem(lambda: c.download(job.id, dest))
            assert err.status == 409 and "canceled" in err.detail
            assert not (tmp_path / "x").exists()
            existing = tmp_path / "existing"
            existing.mkdir()
            problem(lambda: c.download(job.id, existing))
            assert existing.is_dir() and not list(existing.iterdir())  # kept, as it was
        finally:
            c.delete(job.id)


def test_prune_remote_of_a_failing_job_raises_its_error(service, tmp_path):
    with client(service, "erin") as c:
        err = problem(lambda: c.prune_remote(
            service.model, tmp_path / "out", input_shape=(1, 5, 16, 16), sparsity=0.5,
            iterations=2, progress=False))  # fmt: skip
        assert err.problem.job_status == "failed" and err.problem.job_id
        assert err.detail  # the engine's message: what to fix
        assert not (tmp_path / "out").exists()
        c.delete(err.problem.job_id)


def test_auth_errors(service):
    with Client(service.url, "not-a-key") as c:
        err = problem(lambda: c.get(str(uuid.uuid4())))
        assert (err.status, err.code, err.title) == (401, "unauthorized", "Unauthorized")
        assert err.detail == "the API key is not valid"
    with Client(service.url, "") as c:  # no key at all
        assert "Authorization: Bearer" in problem(lambda: list(c.list())).detail


def test_not_found(service):
    missing = str(uuid.uuid4())
    with client(service, "alice") as c:
        err = problem(lambda: c.get(missing))
        assert (err.status, err.type) == (404, "urn:synflow:problem:job_not_found")
        assert str(err) == f"HTTP 404 Job not found: there is no job {missing}"
        for call in (c.cancel, c.delete):
            assert problem(lambda call=call: call(missing)).status == 404


def test_upload_too_large(service, tmp_path):
    big = tmp_path / "big.pt"
    big.write_bytes(b"PK\x03\x04" + bytes(MAX_UPLOAD + 10))
    with client(service, "frank") as c:
        err = problem(lambda: c.submit(big, sparsity=0.5, input_shape=SHAPE))
        assert (err.status, err.code) == (413, "upload_too_large")
        assert "SYNFLOW_MAX_UPLOAD_BYTES" in err.detail


def test_invalid_requests(service):
    with client(service, "frank") as c:
        err = problem(lambda: c.submit(service.model, sparsity=0.5))
        assert (err.status, err.code) == (422, "missing_inputs")
        err = problem(lambda: c.submit(service.model, sparsity=2, input_shape=SHAPE))
        assert (err.status, err.code) == (422, "invalid_request")
        assert err.problem.errors[0]["field"] == "sparsity"
        # fields the service does not know yet pass through the client, the service decides
        err = problem(lambda: c.submit(service.model, sparsity=0.5, input_shape=SHAPE, colour=1))
        assert err.status == 422 and "colour" in err.detail


def test_rate_limited(service):
    with client(service, "grace") as c:
        ids = []
        try:
            for _ in range(BURST):
                ids.append(c.submit(service.model, input_shape=SHAPE, sparsity=0.5).id)
            err = problem(lambda: c.submit(service.model, input_shape=SHAPE, sparsity=0.5))
            assert (err.status, err.code) == (429, "rate_limited")
            assert int(err.retry_after) > 0
        finally:
            for job_id in ids:
                c.delete(job_id)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_service_is_one_problem_error():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url) as c:
        err = problem(lambda: c.get("x"))
    assert err.status is None and err.type == UNREACHABLE
    assert str(err).startswith(f"cannot reach the service at {url} (ConnectError")
    with Client("http://no-such-host.invalid") as c:
        assert problem(lambda: list(c.list())).status is None


def test_a_silent_service_times_out_as_a_problem_error():
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with Client(url, timeout=0.5) as c:
            err = problem(lambda: c.get("x"))
    assert err.status is None and "ReadTimeout" in str(err)


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in for what may sit in front of the service: records the request; answers
    503 with an HTML page (a proxy's) or a job."""

    requests: ClassVar[list[tuple[str, dict, bytes]]] = []
    answer: tuple[int, dict, bytes] = (503, {}, b"")

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).requests.append((self.path, dict(self.headers), body))
        status, headers, payload = type(self).answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_error_page_that_is_not_a_problem_document(recorder):
    html = b"<html><body><h1>503 Service Unavailable</h1>\n<p>try later</p></body></html>"
    _Recorder.answer = (503, {"Content-Type": "text/html", "Retry-After": "7"}, html)
    with Client(recorder) as c:
        err = problem(lambda: c.get("x"))
    assert (err.status, err.type, err.title, err.retry_after) == (
        503, "about:blank", "Service Unavailable", "7")  # fmt: skip
    assert "try later" in err.detail


def test_submit_sends_the_config_and_the_calibration_part(recorder, tmp_path, service):
    job = Job.model_validate({
        "id": "j1", "status": "queued", "created_at": "2026-01-01T00:00:00Z", "config": {},
        "links": {"self": "/jobs/j1", "cancel": "/jobs/j1/cancel", "artifacts": {}},
        "callback": {"status": "pending", "attempts": 0}, "later_field": 1,
    })  # fmt: skip
    _Recorder.answer = (202, {"Content-Type": "application/json"}, job.model_dump_json().encode())
    calibration = tmp_path / "calib.safetensors"
    calibration.write_bytes(b"calibration-bytes")
    with Client(recorder, api_key="k") as c:
        got = c.submit(service.model, calibration=calibration, sparsity=0.5,
                       input_shape=SHAPE, callback_url="https://example.org/hook",
                       granularity="2:4")  # fmt: skip
    assert got.callback.status == "pending" and got.model_extra["later_field"] == 1
    path, headers, body = _Recorder.requests[0]
    assert path == "/prune" and headers["Authorization"] == "Bearer k"
    config = {"sparsity": 0.5, "input_shape": list(SHAPE),
              "callback_url": "https://example.org/hook", "granularity": "2:4"}  # fmt: skip
    assert f'name="config"\r\n\r\n{json.dumps(config)}\r\n'.encode() in body
    assert b'name="calibration"; filename="calib.safetensors"' in body
    assert b"calibration-bytes" in body
    assert service.model.read_bytes() in body


def test_url_and_key_from_the_environment(recorder):
    _Recorder.answer = (
        404,
        {"Content-Type": "application/problem+json"},
        json.dumps({"type": "t", "title": "Not found", "status": 404}).encode(),
    )
    program = "from synflow.client import Client\nClient().get('abc')"
    env = {"SYNFLOW_URL": recorder, "SYNFLOW_API_KEY": "from-env", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True)
    assert "ProblemError: HTTP 404 Not found" in out.stderr
    path, headers, _ = _Recorder.requests[0]
    assert path == "/jobs/abc" and headers["Authorization"] == "Bearer from-env"


def test_the_client_imports_no_service_worker_or_torch():
    program = (
        "import sys, synflow.client, synflow.client.cli\n"
        "bad = ('torch', 'fastapi', 'celery', 'redis', 'service', 'worker', 'numpy')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))"
    )
    out = subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_verify_webhook_is_the_services_check():
    from synflow.client import WebhookVerificationError, verify_webhook
    from synflow.webhooks import new_secret, sign

    secret, body = new_secret(), b'{"id": "j1", "status": "succeeded"}'
    headers = sign(secret, "msg_j1", int(time.time()), body)
    verify_webhook(headers, body, secret)  # genuine: no error
    verify_webhook({k.upper(): v for k, v in headers.items()}, body, secret)
    for forged in ((headers, body + b" ", secret), (headers, body, new_secret())):
        with pytest.raises(WebhookVerificationError):
            verify_webhook(*forged)
