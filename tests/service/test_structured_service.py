"""granularity=channel and N:M through the embedded service: real HTTP, the API, its Celery
worker and the sandboxed child that prunes."""

from __future__ import annotations

import json
import warnings

import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.checks import ARTIFACT_NAMES
from tests.service.harness import base_env, client_for, small_cnn, start_api, wait_status


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc")
    api, url = start_api(base_env(tmp / "data"), tmp)
    try:
        yield url
    finally:
        api.kill()


def _run(client, path, name, **data) -> dict:
    with path.open("rb") as fh:
        response = client.post("/prune", data=data, files={"model": (name, fh)})
    assert response.status_code == 202, response.text
    return wait_status(client, response.json()["id"], timeout=240)


def _download(client, job, name, out):
    response = client.get(job["links"]["artifacts"][name])
    assert response.status_code == 200, response.text
    out.write_bytes(response.content)
    return out


def test_channel_job_returns_a_smaller_onnx_model(service, tmp_path):
    path = tmp_path / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(small_cnn(), (torch.ones(1, 3, 16, 16),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"])  # fmt: skip
    with client_for(service) as client:
        job = _run(client, path, "cnn.onnx", config=json.dumps(
            {"sparsity": 0.5, "granularity": "channel", "iterations": 2}))  # fmt: skip
        assert job["status"] == "succeeded", job
        assert job["config"]["granularity"] == "channel" and job["config"]["scope"] == "local"
        model = _download(client, job, "model", tmp_path / "model.onnx")
        report = json.loads(_download(client, job, "report", tmp_path / "r.json").read_text())
    s = report["structured"]
    assert [c["kept"] for c in s["channels"]] == [4, 8, 10]  # 8 -> 4, 16 -> 8; outputs whole
    assert s["macs"]["after"] < s["macs"]["before"]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": torch.ones(1, 3, 16, 16).numpy()})
    assert y.shape == (1, 10) and bool(torch.isfinite(torch.from_numpy(y)).all())
    assert s["latency"]["onnxruntime_cpu_ms"]["after"] > 0


def test_nm_job_returns_two_of_four_masks(service, tmp_path):
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(small_cnn()), str(path))
    with client_for(service) as client:
        job = _run(client, path, "cnn.pt", granularity="2:4", iterations="3",
                   input_shape="1,3,16,16")  # fmt: skip
        assert job["status"] == "succeeded", job
        assert job["config"]["granularity"] == "2:4" and job["config"]["density"] == 0.5
        masks = load_file(_download(client, job, "masks", tmp_path / ARTIFACT_NAMES["masks"]))
    for key in ("2.weight", "6.weight"):  # conv 8->16 and linear 16->10: grouped by 4
        groups = masks[key].movedim(1, -1).reshape(-1, 4)
        assert bool((groups.sum(1) == 2).all()), key
    assert bool(masks["0.weight"].all())  # 3 input channels: no groups of 4, kept dense


def test_bad_granularity_is_a_422_naming_the_choices(service, tmp_path):
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(small_cnn()), str(path))
    with client_for(service) as client, path.open("rb") as fh:
        response = client.post("/prune", data={"granularity": "3:2", "input_shape": "1,3,8,8"},
                               files={"model": ("m.pt", fh)})  # fmt: skip
    assert response.status_code == 422
    assert "0 < N < M" in response.text


def test_channel_job_on_torchscript_fails_with_what_to_do(service, tmp_path):
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(small_cnn()), str(path))
    with client_for(service) as client:
        job = _run(client, path, "cnn.pt", granularity="channel", sparsity="0.5",
                   input_shape="1,3,16,16")  # fmt: skip
    assert job["status"] == "failed"
    assert "dynamo=False" in job["error"]["detail"]
