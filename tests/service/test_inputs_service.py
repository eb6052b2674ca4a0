"""Input specs, half-precision models and the actionable errors through the embedded service:
`synflow serve` on a free port (API + its Celery worker + sandboxed child), real HTTP."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.e2e.checks import download_all
from tests.service.harness import base_env, client_for, start_api, wait_status
from tests.synflow import nets, reference
from tests.synflow.input_nets import Tokens, TwoInputs, half_model, linearised_twin


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc")
    api, url = start_api(base_env(tmp / "data"), tmp)
    try:
        yield url
    finally:
        api.kill()


def _post(client, model: Path, **data):
    with model.open("rb") as fh:
        return client.post("/prune", data=data, files={"model": ("model.pt", fh)})


def _run(client, model: Path, **data) -> dict:
    response = _post(client, model, **data)
    assert response.status_code == 202, response.text
    return wait_status(client, response.json()["id"], timeout=180)


def _script(module: nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def _check(client, job: dict, out: Path, module: nn.Module, expected: dict, example: tuple):
    assert job["status"] == "succeeded", job
    paths = download_all(client, job, out)
    masks, weights = load_file(paths["masks"]), load_file(paths["weights"])
    original = module.state_dict()
    assert set(masks) == set(expected)
    for name, mask in expected.items():
        assert torch.equal(masks[name], mask), name
        assert weights[name].dtype == original[name].dtype
        assert torch.equal(weights[name] == 0, ~mask | (original[name] == 0)), name
    pruned = torch.jit.load(str(paths["model"]))
    for name, value in pruned.state_dict().items():
        assert value.dtype == original[name].dtype and torch.equal(value, weights[name]), name
    y = pruned(*example)
    assert bool(torch.isfinite(y).all())
    total = sum(m.numel() for m in expected.values())
    assert job["result"]["prunable"] == total
    return json.loads(paths["report"].read_text()), y


def test_two_inputs_as_repeated_input_fields(service, tmp_path):
    torch.manual_seed(1)
    module = TwoInputs()
    path = _script(module, tmp_path / "two.pt")
    with client_for(service) as client:
        job = _run(client, path, sparsity="0.8", iterations="5", input=["2,6", "float32:2,4"])
        assert job["config"]["inputs"] == ["2,6", "2,4"]
        expected = reference.reference_synflow(module, [((2, 6), "float32"), ((2, 4), "float32")],
                                               0.2, 5)  # fmt: skip
        report, _ = _check(client, job, tmp_path / "out", module, expected,
                           (torch.ones(2, 6), torch.ones(2, 4)))  # fmt: skip
    total = 6 * 8 + 4 * 8 + 8 * 3
    assert job["result"]["kept"] == total - math.floor(0.8 * total)
    assert report["inputs"] == ["2,6", "2,4"]


def test_int64_token_model_with_inputs_in_the_json_config(service, tmp_path):
    torch.manual_seed(2)
    module = Tokens()
    path = _script(module, tmp_path / "tokens.pt")
    config = {"compression": 4, "iterations": 4, "inputs": [{"shape": [1, 7], "dtype": "int64"}]}
    with client_for(service) as client:
        job = _run(client, path, config=json.dumps(config))
        expected = reference.reference_synflow(
            linearised_twin(module), [((1, 7), "int64")], 0.25, 4
        )
        _check(client, job, tmp_path / "out", module, expected,
               (torch.ones(1, 7, dtype=torch.int64),))  # fmt: skip
    total = 16 * 24 + 24 * 5
    assert job["result"]["kept"] == total - math.floor(0.75 * total)
    assert any("integer inputs (int64:1,7) were fed all ones" in w
               for w in job["result"]["warnings"])  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_models(service, tmp_path, dtype):
    module = half_model(dtype)
    path = _script(module, tmp_path / "half.pt")
    with client_for(service) as client:
        job = _run(client, path, sparsity="0.9", iterations="5", input_shape="1,3,8,8")
        expected = reference.reference_synflow(half_model(dtype).float(), (1, 3, 8, 8), 0.1, 5)
        report, y = _check(client, job, tmp_path / "out", module, expected,
                           (torch.ones(1, 3, 8, 8, dtype=dtype),))  # fmt: skip
    assert y.dtype == dtype
    total = job["result"]["prunable"]
    assert job["result"]["kept"] == total - math.floor(0.9 * total)
    assert report["precision"] == "float32" and report["flops"]["pruned"] > 0


def test_input_fields_answer_422_with_what_to_fix(service, tmp_path):
    path = _script(nets.seeded(nets.ResCNN), tmp_path / "m.pt")
    with client_for(service) as client:
        for data, code, needle in [
            ({"sparsity": "0.5"}, "missing_inputs", "-F input=int64:1,128"),
            ({"sparsity": "0.5", "input": ["int99:1,2"]}, "invalid_request",
             "unknown input dtype 'int99'"),
            ({"sparsity": "0.5", "input": ["1,3"], "input_shape": "1,3"}, "invalid_request",
             "not both"),
            ({"sparsity": "0.5", "input": ["1,3"], "inputs": "1,3"}, "invalid_request",
             "not both"),
        ]:  # fmt: skip
            response = _post(client, path, **data)
            assert response.status_code == 422, response.text
            body = response.json()
            assert body["type"] == f"urn:synflow:problem:{code}", body
            assert needle in body["detail"], body


def _failed(client, path: Path, **data) -> str:
    job = _run(client, path, **data)
    assert job["status"] == "failed", job
    return job["error"]["detail"]


def test_actionable_errors_are_failed_jobs_with_the_cli_message(service, tmp_path):
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2)).eval()  # fmt: skip
    frozen = tmp_path / "frozen.pt"
    torch.jit.save(torch.jit.freeze(torch.jit.script(small)), str(frozen))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval(), {nn.Linear},
            torch.qint8,
        )  # fmt: skip
        quantized_path = tmp_path / "quantized.pt"
        torch.jit.save(torch.jit.script(quantized), str(quantized_path))
    rescnn = _script(nets.seeded(nets.ResCNN, seed=3), tmp_path / "rescnn.pt")
    fast = {"sparsity": "0.5", "iterations": "2"}
    with client_for(service) as client:
        detail = _failed(client, frozen, input_shape="1,3,8,8", **fast)
        assert "frozen (torch.jit.freeze)" in detail and "preserved_attrs" in detail
        detail = _failed(client, quantized_path, input_shape="1,4", **fast)
        assert "quantized weights" in detail and "Prune the float model first" in detail
        detail = _failed(client, rescnn, input_shape="3,8,8", **fast)
        assert "batch dimension is missing" in detail and "1,3,8,8" in detail
        detail = _failed(client, rescnn, input_shape="1,3,8,8", exclude="fc.*,nope.*", **fast)
        assert "exclude pattern 'nope.*' matches no prunable parameter" in detail
        ok = _run(client, rescnn, input_shape="1,3,8,8", exclude="fc.*,stem.*", **fast)
        assert ok["status"] == "succeeded", ok
        assert {row["name"] for row in ok["result"]["layers"]}.isdisjoint(
            {"fc.weight", "stem.weight"}
        )


def test_a_worker_without_the_gpu_it_is_told_to_use(tmp_path):
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    env = base_env(tmp_path / "data", device=device)
    api, url = start_api(env, tmp_path)
    try:
        with client_for(url) as client:
            path = _script(nets.seeded(nets.ResCNN), tmp_path / "m.pt")
            detail = _failed(client, path, sparsity="0.5", iterations="2", input_shape="1,3,8,8")
    finally:
        api.kill()
    assert f"device '{device}'" in detail
    assert ("has none that torch can use" in detail) != torch.cuda.is_available()
