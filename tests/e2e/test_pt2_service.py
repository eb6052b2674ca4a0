"""torch.export `.pt2` programs through the service over HTTP, in embedded mode (`serve`: the API
and a real worker whose sandboxed child loads the program): no input shape sent, exact counts,
a downloaded `model.pt2` that `torch.export.load` runs with zeros where the masks say, and hostile
archives failing their job with a message that names the problem."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
import torch
import torchvision
from safetensors.torch import load_file

from tests.service.harness import base_env, client_for, start_api, wait_status
from tests.synflow.pt2_files import TwoInputs, edit_json, export, marker_pickle, rewrite
from tests.synflow.pt2_files import weight_member as member_of

pytestmark = pytest.mark.slow

WEIGHTS_CONFIG = "data/weights/model_weights_config.json"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc-pt2")
    api, url = start_api(base_env(tmp / "data"), tmp)
    try:
        yield url
    finally:
        api.stop()


def post(client: httpx.Client, model: Path, **fields) -> dict:
    """POST /prune with the model and fields only: no input_shape, the program states it."""
    with model.open("rb") as fh:
        response = client.post(
            "/prune",
            data={k: str(v) for k, v in fields.items()},
            files={"model": ("upload.bin", fh)},
        )
    assert response.status_code == 202, response.text
    return response.json()


def download(client: httpx.Client, job: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    names = {"masks": "masks.safetensors", "weights": "weights.safetensors",
             "model": "model.pt2", "report": "report.json", "report.png": "report.png"}  # fmt: skip
    paths = {}
    for name, link in job["links"]["artifacts"].items():
        response = client.get(link)
        assert response.status_code == 200, response.text
        paths[name] = out / names[name]
        paths[name].write_bytes(response.content)
    assert set(paths) == set(names)
    return paths


def check(paths: dict[str, Path], model: torch.nn.Module, job: dict, args: tuple) -> None:
    masks = load_file(paths["masks"])
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    density = 1.0 - job["config"]["sparsity"]
    assert total - kept == math.floor((1 - density) * total)
    assert job["result"]["kept"] == kept and job["result"]["prunable"] == total
    original = model.state_dict()
    program = torch.export.load(paths["model"])
    weights = load_file(paths["weights"])
    assert set(program.state_dict) == set(original) == set(weights)
    for key, value in original.items():
        expected = value * masks[key] if key in masks else value
        assert torch.equal(program.state_dict[key], expected), key
        assert torch.equal(weights[key], expected), key
    assert torch.isfinite(program.module()(*args)).all()


def test_resnet18_pt2(url, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    args = (torch.ones(1, 3, 32, 32),)
    pt2 = export(model, args, tmp_path / "resnet18.pt2")
    with client_for(url) as client:
        job = post(client, pt2, sparsity=0.9, iterations=2)
        job = wait_status(client, job["id"], timeout=300)
        assert job["status"] == "succeeded", job
        assert job["config"]["input_shape"] is None
        check(download(client, job, tmp_path / "out"), model, job, args)
        assert job["result"]["prunable"] == 11_172_032


def test_two_inputs_pt2(url, tmp_path):
    torch.manual_seed(2)
    model = TwoInputs().eval()
    args = (torch.ones(2, 4), torch.ones(2, 6))
    pt2 = export(model, args, tmp_path / "two.pt2")
    with client_for(url) as client:
        job = wait_status(client, post(client, pt2, sparsity=0.5, iterations=3)["id"])
        assert job["status"] == "succeeded", job
        check(download(client, job, tmp_path / "out"), model, job, args)
        assert job["result"]["prunable"] == 8 * 4 + 8 * 6 + 3 * 8


def test_hostile_pt2_fail_their_jobs(url, tmp_path):
    """A pickled weight and a graph naming a missing weight: failed jobs that say why; the
    pickle never ran, and the worker goes on serving."""
    torch.manual_seed(3)
    good = export(TwoInputs().eval(), (torch.ones(2, 4), torch.ones(2, 6)), tmp_path / "ok.pt2")
    marker = tmp_path / "marker"

    def pickled(value):
        value["config"]["a.weight"]["use_pickle"] = True

    with_pickle = rewrite(
        good,
        tmp_path / "pickled.pt2",
        {
            WEIGHTS_CONFIG: edit_json(pickled),
            member_of(good, "a.weight"): lambda _: marker_pickle(marker),
        },
    )
    missing = rewrite(
        good,
        tmp_path / "missing.pt2",
        {WEIGHTS_CONFIG: edit_json(lambda v: v["config"].pop("head.weight"))},
    )
    with client_for(url) as client:
        for path, words in ((with_pickle, ("'a.weight'", "pickle")),
                            (missing, ("'head.weight'", "does not hold"))):  # fmt: skip
            job = wait_status(client, post(client, path, sparsity=0.5, iterations=2)["id"])
            assert job["status"] == "failed", job
            assert job["error"]["code"] == "invalid_model" and job["error"]["status"] == 422
            for word in words:
                assert word in job["error"]["detail"], job["error"]
        assert not marker.exists()
        job = wait_status(client, post(client, good, sparsity=0.5, iterations=2)["id"])
        assert job["status"] == "succeeded", job
