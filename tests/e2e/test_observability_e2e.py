"""Operating the service, end to end over real HTTP with a real worker, in both modes (embedded:
`serve` with its worker child; production: Redis and a separate `celery worker` process):

- /metrics, parsed with prometheus-client's parser: the job counters and histograms move as
  jobs succeed, fail and are canceled, although the worker (another process) ends them;
  queue depth and running jobs per worker while a job runs; HTTP latency by route template;
- JSON logs (SYNFLOW_LOG_FORMAT=json) of the API and the worker carry the job id and tenant on
  the job's lines, and the request id the client sent;
- report.png through the service, and every stored artifact file in the one file mode.
"""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobs.settings import hash_key
from synflow.io.atomic import FILE_MODE
from tests.e2e.checks import check_report_png
from tests.service.harness import (
    Proc,
    client_for,
    running_service,
    running_with_progress,
    submit,
    wait_status,
    write_model,
)

pytestmark = pytest.mark.slow

KEY = "alice-key"
METRICS_TOKEN = "scrape-me"
LONG = {"sparsity": 0.99, "iterations": 10000}


class Service:
    def __init__(self, mode: str, url: str, data_dir: Path, logs: list[Proc]):
        self.mode, self.url, self.data_dir, self.logs = mode, url, data_dir, logs

    def metrics(self) -> dict[tuple[str, tuple], float]:
        with client_for(self.url, METRICS_TOKEN) as scraper:
            response = scraper.get("/metrics")
        assert response.status_code == 200, response.text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def log_lines(self) -> list[dict]:
        """Every JSON line the service's processes logged (Celery's banner is plain print)."""
        lines = []
        for proc in self.logs:
            for line in proc.log().splitlines():
                if line.startswith("{"):
                    lines.append(json.loads(line))
        return lines


@pytest.fixture(scope="module", params=["embedded", "redis"])
def service(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"obs-{request.param}")
    settings = {
        "api_keys": json.dumps({"alice": hash_key(KEY)}),
        "metrics_key": hash_key(METRICS_TOKEN),
        "log_format": "json",
    }
    with running_service(request.param, tmp, settings) as (url, procs):
        yield Service(request.param, url, tmp / "data", procs)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "small.pt")


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_logs_and_report_png(service, model_file, tmp_path):
    before = service.metrics()
    request_id = f"e2e-{uuid.uuid4().hex}"
    size = model_file.stat().st_size
    with client_for(service.url, KEY) as client:
        response = client.post(
            "/prune",
            data={"sparsity": "0.9", "iterations": "5", "input_shape": "1,3,16,16"},
            files={"model": ("model.pt", model_file.read_bytes())},
            headers={"X-Request-ID": request_id},
        )
        assert response.status_code == 202, response.text
        assert response.headers["x-request-id"] == request_id
        good = wait_status(client, response.json()["id"])
        assert good["status"] == "succeeded", good["error"]
        # a shape the model rejects: the job fails in the child
        bad = submit(client, model_file, sparsity=0.5, input_shape="1,5,16,16").json()
        assert wait_status(client, bad["id"])["status"] == "failed"
        # a long job, canceled while it runs: meanwhile the gauges show it running
        long = submit(client, model_file, **LONG).json()
        running_with_progress(client, long["id"])
        during = service.metrics()
        client.post(f"/jobs/{long['id']}/cancel")
        assert wait_status(client, long["id"], timeout=30)["status"] == "canceled"
        png = client.get(f"/jobs/{good['id']}/report.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert f"{good['id']}-report.png" in png.headers["content-disposition"]
    after = service.metrics()

    # counters and histograms, from the job store: the worker's events are counted here too
    assert delta(after, before, "synflow_jobs_created_total", tenant="alice") == 3
    assert delta(after, before, "synflow_upload_bytes_total", tenant="alice") == 3 * size
    for status in ("succeeded", "failed", "canceled"):
        assert (
            delta(after, before, "synflow_jobs_finished_total", status=status, tenant="alice") == 1
        )
        assert delta(after, before, "synflow_job_duration_seconds_count", status=status) == 1
        inf = delta(after, before, "synflow_job_duration_seconds_bucket", status=status, le="+Inf")
        assert inf == 1
    ran = delta(after, before, "synflow_job_duration_seconds_sum", status="succeeded")
    assert 0 < ran < 120
    assert delta(after, before, "synflow_job_queue_wait_seconds_count") == 3
    assert delta(after, before, "synflow_job_queue_wait_seconds_bucket", le="+Inf") == 3
    # gauges while the long job ran: one running job on one worker, nothing queued
    workers = {k: v for k, v in during.items() if k[0] == "synflow_worker_running_jobs"}
    assert list(workers.values()) == [1.0], workers
    assert during["synflow_queue_depth", ()] == 0
    assert during["synflow_jobs", (("status", "running"), ("tenant", "alice"))] == 1
    assert after["synflow_job_store_up", ()] == 1
    # HTTP latency by route template, never by raw path
    route = (("method", "GET"), ("route", "/jobs/{job_id}"))
    assert after["synflow_http_request_duration_seconds_count", route] >= 3
    assert not any(good["id"] in str(labels) for _, labels in after)

    check_report_png_file(png.content, tmp_path, len(good["result"]["layers"]))
    stored = service.data_dir / "artifacts" / "jobs" / good["id"] / "artifacts"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in stored.iterdir()}
    assert modes == dict.fromkeys(
        ["masks.safetensors", "weights.safetensors", "model.pt", "report.json", "report.png"],
        FILE_MODE,
    )

    check_json_logs(service.log_lines(), request_id, good["id"], long["id"])


def check_report_png_file(content: bytes, tmp_path: Path, layers: int) -> None:
    path = tmp_path / "report.png"
    path.write_bytes(content)
    check_report_png(path, layers)


def check_json_logs(lines: list[dict], request_id: str, job_id: str, canceled_id: str) -> None:
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    # the API: the request's lines carry the id the client sent, and the job and tenant
    submitted = [line for line in lines if line.get("request_id") == request_id]
    assert any(line["logger"] == "uvicorn.access" for line in submitted), submitted
    assert all(line.get("job_id") == job_id and line.get("tenant") == "alice" for line in submitted)
    # the worker: every line of the job's run carries its id and tenant
    for wanted in (job_id, canceled_id):
        mentioned = [line for line in lines if wanted in line["message"]]
        worker_lines = [line for line in mentioned if line["logger"] == "worker"]
        assert any("started" in line["message"] for line in worker_lines), mentioned
        assert all(line.get("job_id") == wanted for line in mentioned), mentioned
        assert all(line.get("tenant") == "alice" for line in worker_lines)
