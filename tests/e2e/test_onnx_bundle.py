"""ONNX with external data over HTTP: a bundle (zip of the `.onnx` and its data) through a real
embedded service (API + worker + sandboxed child), pruned exactly and returned as `model.zip`;
hostile bundles each a clear 422 or failed job, with no file outside the upload opened."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from synflow.config import PruneConfig
from synflow.pipeline import prune_file
from tests.security.test_attacks import assert_clear_failure, outcome
from tests.service.harness import base_env, client_for, start_api, wait_status
from tests.synflow.onnx_external_cases import (
    bundle,
    check_pruned,
    expected_kept,
    export_dynamo,
    hostile_bundle,
    masked_copy,
    model_naming,
    symlink_member,
    weight_bytes,
)
from tests.synflow.test_onnx_bad_inputs import FifoWatch

pytestmark = pytest.mark.slow

SPARSITY, ITERATIONS = 0.9, 4
MAX_MEMBER_BYTES = 1 << 20  # small, so "larger than the limits" is cheap to build


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    env = base_env(data, archive_max_member_bytes=str(MAX_MEMBER_BYTES))
    api, url = start_api(env, tmp_path_factory.mktemp("logs"))
    yield url
    api.stop()


@pytest.fixture
def client(service):
    with client_for(service) as client:
        yield client


def post(client, path: Path, **fields):
    data = {"sparsity": str(SPARSITY), "iterations": str(ITERATIONS), **fields}
    with path.open("rb") as fh:
        return client.post("/prune", data=data, files={"model": ("bundle.zip", fh)})


def test_bundle_over_http(client, tmp_path):
    exported = export_dynamo(tmp_path / "export")
    path = bundle(
        tmp_path / "bundle.zip",
        {"m.onnx": exported, "m.onnx.data": exported.with_name("m.onnx.data")},
        zipfile.ZIP_DEFLATED,  # what a plain `zip -j` writes
    )
    response = post(client, path)  # no input_shape: the graph states it
    assert response.status_code == 202, response.text
    job = wait_status(client, response.json()["id"], timeout=180)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["kept"] == expected_kept(result["prunable"], SPARSITY, ITERATIONS)

    masks_response = client.get(f"/jobs/{job['id']}/masks")
    assert masks_response.status_code == 200
    (tmp_path / "masks.safetensors").write_bytes(masks_response.content)
    masks = load_file(str(tmp_path / "masks.safetensors"))
    model_response = client.get(f"/jobs/{job['id']}/model")
    assert model_response.status_code == 200
    assert model_response.headers["content-disposition"].endswith('-model.zip"')
    (tmp_path / "model.zip").write_bytes(model_response.content)

    # the same masks as the library on the same bundle, outside the service
    local = prune_file(path, PruneConfig(sparsity=SPARSITY, iterations=ITERATIONS), tmp_path / "l")
    assert local["totals"]["kept"] == result["kept"]
    local_masks = load_file(str(tmp_path / "l" / "masks.safetensors"))
    assert sorted(local_masks) == sorted(masks)
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, local_masks[name], name)
    assert result["prunable"] == sum(m.size for m in masks.values())
    assert result["kept"] == sum(int(m.sum()) for m in masks.values())

    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        assert sorted(archive.namelist()) == ["model.onnx", "model.onnx.data"]
        archive.extractall(tmp_path / "unpacked")
    check_pruned(
        tmp_path / "unpacked" / "model.onnx",
        exported,
        masks,
        masked_copy(exported, masks, tmp_path / "by-hand.onnx"),
    )


def test_the_api_does_not_inflate(client, tmp_path):
    """A bundle whose data member does not inflate passes the API's cheap check (central
    directory only) and fails in the job, where inflation happens."""
    model = model_naming(tmp_path / "src", "w.bin").read_bytes()
    path = tmp_path / "damaged.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", model)
        archive.writestr("w.bin", weight_bytes() * 64)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("w.bin")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # its deflate data
    data[start : start + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    response = post(client, path)
    assert response.status_code == 202, response.text
    result = outcome(client, response)
    assert result["status"] == "failed"
    assert_clear_failure(result, "zip")


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_hostile_bundles(client, tmp_path):
    fifo = FifoWatch(tmp_path / "outside.bin")
    src = tmp_path / "src"

    def model(location, **kw):
        return model_naming(src, location, **kw).read_bytes()

    single = model_naming(tmp_path / "single", "w.bin")
    (tmp_path / "single" / "w.bin").write_bytes(weight_bytes())
    cases = {
        "symlink data member": (
            [("model.onnx", model("w.bin")), symlink_member("w.bin", str(fifo.path))],
            ("symbolic link",),
        ),
        "parent location": ([("model.onnx", model("../outside.bin"))], ("external data", "..")),
        "absolute location": ([("model.onnx", model(str(fifo.path)))], ("absolute",)),
        "parent member name": (
            [("model.onnx", model("w.bin")), ("../outside.bin", weight_bytes())],
            ("escapes",),
        ),
        "data file larger than the limits": (
            [("model.onnx", model("w.bin")), ("w.bin", weight_bytes() + bytes(MAX_MEMBER_BYTES))],
            ("larger than the limit",),
        ),
        "offset beyond the file": (
            [("model.onnx", model("w.bin", offset=4096)), ("w.bin", weight_bytes())],
            ("beyond the end",),
        ),
        "two models": ([("a.onnx", model("w.bin")), ("b.onnx", model("w.bin"))], ("2 .onnx",)),
    }
    results = {}
    try:
        for kind, (members, words) in cases.items():
            path = hostile_bundle(tmp_path / f"{kind.replace(' ', '-')}.zip", members)
            results[kind] = outcome(client, post(client, path))
            assert_clear_failure(results[kind], *words)
        # a single .onnx naming a data file, with that file beside it on the client's disk
        with single.open("rb") as fh:
            response = client.post(
                "/prune", data={"sparsity": "0.5"}, files={"model": ("m.onnx", fh)}
            )
        results["single file naming data"] = outcome(client, response)
        assert_clear_failure(results["single file naming data"], "external data", "zip")
    finally:
        opened = fifo.stop()
    for kind, result in results.items():
        print(f"{kind}: {result['status']}: {result['error']['detail'][:150]}")
    assert results["two models"]["status"] == "refused"  # the sniff alone tells
    assert not opened, "a job opened a file outside its upload"
    assert stat.S_ISFIFO(os.stat(fifo.path).st_mode)
