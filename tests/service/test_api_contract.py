"""The HTTP contract's answers to client mistakes: 4xx problem documents that say what to fix,
never a 500. The real app and stores over ASGI; no worker runs, so jobs stay queued."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from jobs.settings import Settings, hash_key
from service.app import create_app
from tests.service.harness import small_cnn, write_model

MAX_UPLOAD = 200_000
SHAPE = "1,3,16,16"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("m") / "small.pt")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        max_upload_bytes=MAX_UPLOAD,
        api_keys={"alice": hash_key("a-key"), "bob": hash_key("b-key")},
        rate_limit_per_minute=0,  # the limit has a test of its own
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, headers={"Authorization": "Bearer a-key"}) as c:
        yield c


def post(client, model: Path | bytes | None, **fields):
    files = {}
    if model is not None:
        content = model.read_bytes() if isinstance(model, Path) else model
        files["model"] = ("model.pt", content)
    data = {k: str(v) for k, v in fields.items()}
    return client.post("/prune", data=data, files=files or {"unused": ("x", b"")})


def assert_problem(response, status: int, code: str | None = None, mentions: str = ""):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"]
    if code:
        assert body["type"] == f"urn:synflow:problem:{code}", body
    assert mentions.lower() in body.get("detail", "").lower(), body
    return body


def test_accepts_fields_or_one_json_config_part(client, model_file):
    ok = post(client, model_file, sparsity=0.9, input_shape=SHAPE)
    assert ok.status_code == 202 and ok.headers["location"] == f"/jobs/{ok.json()['id']}"
    as_json = post(
        client, model_file, config=json.dumps({"compression": 10, "input_shape": [1, 3, 16, 16],
                                               "method": "magnitude", "exclude": ["0.*"]})
    )  # fmt: skip
    assert as_json.status_code == 202, as_json.text
    config = as_json.json()["config"]
    assert config["density"] == pytest.approx(0.1) and config["iterations"] == 1
    assert config["exclude"] == ["0.*"] and config["method"] == "magnitude"


@pytest.mark.parametrize(
    ("fields", "mentions"),
    [
        ({"sparsity": 1.5}, "sparsity"),
        ({"sparsity": "lots"}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": 0.9, "compression": 10}, "not both"),
        ({}, "neither"),
        ({"compression": 0.5}, "compression"),
        ({"sparsity": 0.9, "method": "snip-snap"}, "method"),
        ({"sparsity": 0.9, "iterations": 0}, "iterations"),
        ({"sparsity": 0.9, "schedule": "cosine"}, "schedule"),
        ({"sparsity": 0.9, "input_shape": "1,3,y"}, "input_shape"),
        ({"sparsity": 0.9, "input_shape": "1,0,16"}, "input_shape"),
        ({"sparsity": 0.9, "sparsty": 0.8}, "unknown field"),
        ({"sparsity": 0.9, "config": "{}"}, "not both"),
        ({"config": "{not json"}, "not valid json"),
        ({"config": "[1, 2]"}, "json object"),
    ],
)
def test_bad_request_fields_are_422(client, model_file, fields, mentions):
    fields = {"input_shape": SHAPE, **fields} if "config" not in fields else fields
    if fields.get("input_shape") == SHAPE and "config" in fields:
        fields.pop("input_shape")
    assert_problem(post(client, model_file, **fields), 422, mentions=mentions)


def test_bad_field_lists_every_error(client, model_file):
    body = assert_problem(post(client, model_file, sparsity=2, iterations=-1, input_shape=SHAPE),
                          422, "invalid_request")  # fmt: skip
    assert {e["field"] for e in body["errors"]} == {"sparsity", "iterations"}


def test_missing_model_is_422(client):
    assert_problem(post(client, None, sparsity=0.9, input_shape=SHAPE), 422, "missing_model")


def test_missing_inputs_for_torchscript_is_422(client, model_file):
    assert_problem(post(client, model_file, sparsity=0.9), 422, "missing_inputs", "1,3,224")


def test_not_a_model_is_422(client, tmp_path):
    assert_problem(post(client, b"hello world", sparsity=0.9, input_shape=SHAPE), 422,
                   "invalid_model", "unrecognised")  # fmt: skip
    assert_problem(post(client, b"", sparsity=0.9, input_shape=SHAPE), 422, "invalid_model")
    pickled = tmp_path / "pickle.pt"
    torch.save(small_cnn(), pickled)  # a pickle: refused without being unpickled
    assert_problem(post(client, pickled, sparsity=0.9, input_shape=SHAPE), 422, "invalid_model",
                   "pickle")  # fmt: skip


def test_not_multipart_is_415(client):
    response = client.post("/prune", json={"sparsity": 0.9})
    assert_problem(response, 415, "unsupported_media_type", "multipart/form-data")


def test_oversized_upload_is_413_with_content_length(client):
    big = b"\0" * (MAX_UPLOAD + 3 * 1024 * 1024)
    response = post(client, big, sparsity=0.9, input_shape=SHAPE)
    assert_problem(response, 413, "upload_too_large", str(MAX_UPLOAD))


def test_oversized_upload_is_413_when_chunked(client):
    boundary = "synflowtestboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="sparsity"\r\n\r\n0.9\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.pt"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def body():  # a generator: sent with Transfer-Encoding: chunked, no Content-Length
        yield head
        for _ in range(MAX_UPLOAD // 65536 + 4):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/prune", content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    assert_problem(response, 413, "upload_too_large")


def test_refused_uploads_leave_no_files(app, client):
    root = app.state.settings.artifacts_path
    assert not list((root / "uploads").iterdir())


def test_unknown_job_is_404(client):
    assert_problem(client.get(f"/jobs/{uuid.uuid4()}"), 404, "job_not_found")
    assert_problem(client.get("/jobs/not-a-uuid"), 404, "job_not_found")
    assert_problem(client.get(f"/jobs/{uuid.uuid4()}/masks"), 404)
    assert_problem(client.post(f"/jobs/{uuid.uuid4()}/cancel"), 404)
    assert_problem(client.delete(f"/jobs/{uuid.uuid4()}"), 404)


def test_artifacts_of_unfinished_job_are_409(client, model_file):
    job = post(client, model_file, sparsity=0.9, input_shape=SHAPE).json()
    for name in ("masks", "weights", "model", "report"):
        body = assert_problem(client.get(f"/jobs/{job['id']}/{name}"), 409, "job_not_succeeded",
                              "queued")  # fmt: skip
        assert body["job_status"] == "queued"
    canceled = client.post(f"/jobs/{job['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert_problem(client.get(f"/jobs/{job['id']}/masks"), 409, mentions="canceled")


def test_other_tenant_and_no_key(app, client, model_file):
    job = post(client, model_file, sparsity=0.9, input_shape=SHAPE).json()
    with TestClient(app, headers={"Authorization": "Bearer b-key"}) as bob:
        assert_problem(bob.get(f"/jobs/{job['id']}"), 404, "job_not_found")
        assert_problem(bob.get(f"/jobs/{job['id']}/report"), 404)
        assert job["id"] not in {j["id"] for j in bob.get("/jobs").json()["items"]}
    with TestClient(app) as anonymous:
        response = anonymous.get(f"/jobs/{job['id']}")
        assert_problem(response, 401, "unauthorized", "Bearer")
        assert response.headers["www-authenticate"] == "Bearer"
        assert_problem(anonymous.post("/prune"), 401)


def test_listing_bounds(client):
    assert_problem(client.get("/jobs", params={"limit": 0}), 422, "invalid_request", "limit")
    assert_problem(client.get("/jobs", params={"cursor": "x"}), 422, "invalid_cursor")
    page = client.get("/jobs", params={"limit": 10_000}).json()
    assert len(page["items"]) <= 100


def test_unknown_route_and_method(client):
    assert_problem(client.get("/nope"), 404)
    assert_problem(client.put("/prune"), 405)


def test_health_ready_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    text = client.get("/metrics").text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["synflow_jobs_created"] == families["synflow_jobs_finished"] == "counter"
    assert 'synflow_http_requests_total{method="POST",route="/prune",status="422"}' in text


@pytest.mark.parametrize(
    ("parts", "mentions"),
    [
        ([("model", b"a"), ("model", b"b")], "exactly one"),
        ([("sparsity", b"0.5"), ("sparsity", b"0.6")], "twice"),
        ([("", b"x")], "no name"),
        ([("sparsity", b"\xff\xfe")], "utf-8"),
        ([("exclude", b"x" * 70_000)], "longer than"),
    ],
)
def test_malformed_multipart_is_400(client, parts, mentions):
    boundary = "xyzboundary"
    body = b""
    for name, value in parts:
        disposition = f'form-data; name="{name}"' if name else "form-data"
        if name == "model":
            disposition += '; filename="m.pt"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    response = client.post(
        "/prune", content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    assert_problem(response, 400, "malformed_form", mentions)


def test_truncated_body_is_400(client):
    response = client.post(
        "/prune", content=b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nabc",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )  # fmt: skip
    assert 400 <= response.status_code < 500, response.text
