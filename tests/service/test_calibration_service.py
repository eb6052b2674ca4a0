"""The `calibration` part of POST /prune through the embedded service (`synflow serve`: the API,
its Celery worker and the sandboxed child, real HTTP): accepted and used, size-limited (413),
refused when malformed or when it does not fit the method or the inputs (422), and a failed job
with the engine's message for what only the model can tell (labels beyond its classes)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save
from torch import nn

from synflow.calibration import Calibration
from synflow.config import PruneConfig
from synflow.engine import prune
from synflow.model import LoadedModel
from tests.e2e.checks import download_all
from tests.service.harness import base_env, client_for, start_api, wait_status

CAP = 4096  # the service's calibration cap in these tests, in bytes


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calibration")
    api, url = start_api(base_env(tmp / "data", max_calibration_bytes=str(CAP)), tmp)
    model = tmp / "model.pt"
    torch.jit.save(torch.jit.script(classifier()), str(model))
    try:
        yield url, model, tmp / "data"
    finally:
        api.kill()


def batch(n: int = 8, labels: bool = True, classes: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    data = {"inputs": torch.rand(n, 1, 4, 4, generator=gen)}
    if labels:
        data["labels"] = torch.arange(n) % classes
    return data


def post(client, model: Path, calibration: bytes | None, **fields):
    files = {"model": ("model.pt", model.read_bytes())}
    if calibration is not None:
        files["calibration"] = ("calibration.safetensors", calibration)
    return client.post("/prune", data=fields, files=files)


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_accepted_and_used_as_the_engine_uses_it(service, tmp_path, method):
    url, model, data_dir = service
    tensors = batch()
    with client_for(url) as client:
        # no input_shape: the batch states it (1x1x4x4 per sample)
        response = post(client, model, save(tensors), method=method, sparsity="0.7")
        assert response.status_code == 202, response.text
        job = wait_status(client, response.json()["id"], timeout=180)
        assert job["status"] == "succeeded", job
        masks = load_file(download_all(client, job, tmp_path)["masks"])
    loaded = LoadedModel(format="torchscript", module=classifier(), source=Path("<memory>"))
    calibration = Calibration(tensors["inputs"], tensors["labels"])
    expected = prune(loaded, PruneConfig(sparsity=0.7, method=method), calibration=calibration)
    assert set(masks) == set(expected.masks)
    for key, mask in expected.masks.items():
        assert torch.equal(masks[key], mask), key
    # released with the model once the job ended
    assert not list(data_dir.rglob("calibration"))


def test_larger_than_the_cap_is_413(service):
    url, model, _ = service
    big = save(batch(n=CAP // 64 + 8))
    assert len(big) > CAP
    with client_for(url) as client:
        response = post(client, model, big, method="snip", sparsity="0.5")
    assert response.status_code == 413, response.text
    assert "SYNFLOW_MAX_CALIBRATION_BYTES" in response.json()["detail"]


def _raw(header: object, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


@pytest.mark.parametrize(
    ("calibration", "fields", "words"),
    [
        (b"PK\x03\x04 a zip, or a pickle: not safetensors", {}, "not safetensors"),
        (save({"labels": torch.arange(4)}), {}, "no `inputs`"),
        (save({"inputs": torch.ones(4, 16, dtype=torch.bool), "labels": torch.arange(4)}), {},
         "dtype BOOL"),
        (save({"inputs": torch.ones(4, 1, 4, 4), "labels": torch.ones(4)}), {}, "integer class"),
        (_raw({"inputs": {"dtype": "F32", "shape": [4, 16], "data_offsets": [0, 256]}}), {},
         "take 256 bytes"),
        (save(batch()), {"input_shape": "1,1,5,5"}, "give inputs of shape [N, 1, 5, 5]"),
        (save(batch(labels=False)), {}, "needs `labels`"),
        (save(batch()), {"method": "synflow", "input_shape": "1,1,4,4"}, "data-free"),
        (None, {}, "give a calibration file"),
    ],
)  # fmt: skip
def test_malformed_or_unfit_is_422_with_what_to_fix(service, calibration, fields, words):
    url, model, _ = service
    with client_for(url) as client:
        response = post(client, model, calibration, **{"method": "snip", "sparsity": "0.5",
                                                        **fields})  # fmt: skip
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == "urn:synflow:problem:invalid_calibration"
    assert words in body["detail"], body["detail"]


def test_labels_beyond_the_models_classes_fail_the_job_with_the_reason(service):
    url, model, _ = service
    with client_for(url) as client:
        response = post(client, model, save(batch(classes=5)), method="snip", sparsity="0.5")
        assert response.status_code == 202, response.text
        job = wait_status(client, response.json()["id"], timeout=180)
    assert job["status"] == "failed"
    assert "class indices in [0, 3)" in job["error"]["detail"], job["error"]


def test_two_calibration_parts_are_refused(service):
    url, model, _ = service
    one = save(batch())
    with client_for(url) as client:
        response = client.post(
            "/prune",
            data={"method": "snip", "sparsity": "0.5"},
            files=[("model", ("m.pt", model.read_bytes())),
                   ("calibration", ("a", io.BytesIO(one))),
                   ("calibration", ("b", io.BytesIO(one)))],
        )  # fmt: skip
    assert response.status_code == 400
    assert "at most one `calibration` part" in response.json()["detail"]
