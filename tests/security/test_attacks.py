"""Hostile uploads through `POST /prune` of a real service (API + worker + sandboxed child).

Each hostile file ends as a clear 4xx or a failed job with a reason; nothing it tries leaves
the sandbox (no file outside scratch, no secret in any artifact, record or log); and the worker
serves the next job. One service for the whole module; the ONNX node limit is set low so that
"over the limits" is cheap to build and shows the settings reach the sandboxed child."""

from __future__ import annotations

import json
import os
import socket
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper

from jobs.settings import hash_key
from tests.security.evil_models import evil_torchscript
from tests.service.harness import (
    TERMINAL,
    base_env,
    client_for,
    small_cnn,
    start_api,
    submit,
    wait_status,
    write_model,
)
from tests.synflow.test_onnx_bad_inputs import external_weight, injected_model, linear_model

KEYS = {"alice": "alice-key-" + uuid.uuid4().hex, "bob": "bob-key-" + uuid.uuid4().hex}
ONNX_MAX_NODES = 40


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    env = base_env(
        data,
        api_keys=json.dumps({t: hash_key(k) for t, k in KEYS.items()}),
        onnx_max_nodes=str(ONNX_MAX_NODES),
        sandbox_required_layers="uid-drop,rlimits,landlock-fs,seccomp,net-namespace",
        heartbeat_timeout="30",
    )
    api, url = start_api(env, tmp_path_factory.mktemp("logs"))
    yield url, api, data
    api.stop()


@pytest.fixture
def alice(service):
    with client_for(service[0], KEYS["alice"]) as client:
        yield client


def post_file(client, path: Path, name: str = "model.bin", **fields):
    data = {"sparsity": "0.5", "iterations": "2", **fields}
    with path.open("rb") as fh:
        return client.post("/prune", data=data, files={"model": (name, fh)})


def outcome(client, response) -> dict:
    """A 4xx problem, or the finished job: never a 5xx answer, never a job left running."""
    assert response.status_code < 500, response.text
    if response.status_code != 202:
        assert 400 <= response.status_code < 500
        assert response.headers["content-type"] == "application/problem+json"
        return {"status": "refused", "error": response.json()}
    return wait_status(client, response.json()["id"], TERMINAL, timeout=120)


def assert_clear_failure(result: dict, *words: str) -> None:
    assert result["status"] in ("refused", "failed"), result
    detail = result["error"]["detail"]
    assert detail and "internal" not in result["error"]["type"], result["error"]
    for word in words:
        assert word.lower() in detail.lower(), detail


# --- malicious code ------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path_factory):
    """A world-writable folder outside scratch and a world-readable secret: only the sandbox
    (not file permissions) keeps the job away from them."""
    folder = Path("/tmp") / f"synflow_outside_{uuid.uuid4().hex}"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    secret = folder / "secret.txt"
    secret.write_text("SECRET-" + uuid.uuid4().hex[:8] + "\n")  # 16 bytes, as the model reads
    secret.chmod(0o644)
    yield folder, secret
    for item in folder.iterdir():
        item.unlink()
    folder.rmdir()


def everything_written(data_dir: Path, api) -> list[bytes]:
    """Every file under the service's data folder, and its log."""
    blobs = [api.log_path.read_bytes()]
    for path in data_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            blobs.append(path.read_bytes())
    return blobs


def test_malicious_torchscript_payload_is_real(outside, tmp_path):
    """Loaded and run without the sandbox, the model does write and read: the test below
    shows a real defence."""
    import torch

    folder, secret = outside
    marker = folder / "plain-load.pt"
    model = evil_torchscript(tmp_path / "evil.pt", marker, secret, 1)
    assert not marker.exists()  # scripting and saving do not call __setstate__
    loaded = torch.jit.load(str(model))
    assert marker.exists()
    out = loaded(torch.ones(1, 3, 8, 8))
    assert out.shape == (1, 4, 6, 6)


def test_malicious_torchscript(service, alice, outside, tmp_path):
    _, api, data = service
    folder, secret = outside
    marker = folder / "written-at-load.pt"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        model = evil_torchscript(tmp_path / "evil.pt", marker, secret, port)
        result = outcome(alice, post_file(alice, model, input_shape="1,3,8,8"))
        try:
            connection, _ = listener.accept()
            connection.close()
            connected = True
        except TimeoutError:
            connected = False
    assert result["status"] in ("failed", "succeeded"), result
    print("malicious TorchScript:", result["status"], result.get("error"))
    assert not marker.exists(), "the model wrote a file outside its scratch folder"
    assert not connected
    secret_bytes = secret.read_bytes().strip()
    job = alice.get(f"/jobs/{result['id']}").text.encode()
    assert secret_bytes not in job
    for blob in everything_written(data, api):
        assert secret_bytes not in blob


def test_onnx_node_name_injection(service, alice, tmp_path):
    marker_dir = Path("/tmp") / f"synflow_marker_{uuid.uuid4().hex}"
    marker_dir.mkdir(mode=0o777)
    marker_dir.chmod(0o777)
    try:
        marker = marker_dir / "ran"
        path = tmp_path / "evil.onnx"
        path.write_bytes(injected_model(marker).SerializeToString())
        result = outcome(alice, post_file(alice, path, name="evil.onnx"))
        assert not marker.exists(), "the node name ran as code"
    finally:
        for item in marker_dir.iterdir():
            item.unlink()
        marker_dir.rmdir()
    assert result["status"] == "succeeded", result  # renamed before conversion: prunes fine
    assert result["result"]["prunable"] == 12 and result["result"]["kept"] == 6


# --- malformed and oversized files -------------------------------------------------------------


def zip_bomb(path: Path) -> Path:
    """A valid TorchScript archive plus a code member that inflates to 32 MiB."""
    good = write_model(path.with_name("good.pt"), small_cnn())
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr(f"{root}/code/__torch__/big.py", b"#" * (32 << 20), zipfile.ZIP_DEFLATED)
    return path


def truncated_zip(path: Path) -> Path:
    good = write_model(path.with_name("good.pt"), small_cnn()).read_bytes()
    path.write_bytes(good[: len(good) // 2])
    return path


def random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(100_000))
    return path


def torch_save_pickle(path: Path) -> Path:
    import torch

    torch.save(small_cnn().state_dict(), path, _use_new_zipfile_serialization=False)
    return path


def torch_save_zip(path: Path) -> Path:
    import torch

    torch.save(small_cnn(), path)  # a zip too, but a pickle inside: never unpickled
    return path


def onnx_file(model) -> callable:
    def build(path: Path) -> Path:
        path.write_bytes(model().SerializeToString())
        return path

    return build


def external(location: str):
    return onnx_file(lambda: linear_model(weight=external_weight(location)))


def custom_domain():
    model = linear_model(extra_nodes=(helper.make_node("Evil", ["y"], ["z"], domain="com.evil"),))
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    return model


def shapes_larger_than_data():
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    weight.dims[:] = [4, 3000]
    return linear_model(weight=weight)


def declared_elements_bomb():
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    weight.dims[:] = [100_000, 100_000]  # 40 GB declared, 48 bytes stored
    return linear_model(weight=weight)


def too_many_nodes():
    relus = tuple(
        helper.make_node("Relu", [f"r{i}" if i else "y"], [f"r{i + 1}"], name=f"relu{i}")
        for i in range(ONNX_MAX_NODES)
    )
    return linear_model(extra_nodes=relus)


BAD_INPUTS = {
    "zip bomb": (zip_bomb, ("zip bomb", "code")),
    "truncated zip": (truncated_zip, ()),
    "random bytes": (random_bytes, ()),
    "torch.save pickle": (torch_save_pickle, ("pickle",)),
    "torch.save zip": (torch_save_zip, ()),
    "onnx external data, relative": (external("weights.bin"), ("external data",)),
    "onnx external data, ../": (external("../weights.bin"), ("external data",)),
    "onnx external data, absolute": (external("/etc/passwd"), ("external data",)),
    "onnx external data, symlink": (external("link.bin"), ("external data",)),
    "onnx custom domain": (onnx_file(custom_domain), ("com.evil",)),
    "onnx shapes larger than data": (onnx_file(shapes_larger_than_data), ("W",)),
    "onnx declared elements over limit": (onnx_file(declared_elements_bomb), ("limit",)),
    "onnx nodes over limit": (onnx_file(too_many_nodes), ("limit", str(ONNX_MAX_NODES))),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_fails_clearly(service, alice, tmp_path, kind):
    build, words = BAD_INPUTS[kind]
    path = build(tmp_path / "upload.bin")
    if "symlink" in kind:  # the upload cannot carry a link: the name is all the model has
        (tmp_path / "link.bin").symlink_to("/etc/passwd")
    result = outcome(alice, post_file(alice, path, input_shape="1,3,16,16"))
    print(f"{kind}: {result['status']}: {result['error']['detail'][:160]}")
    assert_clear_failure(result, *words)


def test_worker_still_serves_the_next_job(service, alice, tmp_path):
    model = write_model(tmp_path / "good.pt", small_cnn())
    job = wait_status(alice, submit(alice, model, sparsity=0.5, iterations=2).json()["id"])
    assert job["status"] == "succeeded", job


# --- tenants ------------------------------------------------------------------------------------


def test_another_tenants_job_is_404_on_every_route(service, alice, tmp_path):
    model = write_model(tmp_path / "good.pt", small_cnn())
    job = wait_status(alice, submit(alice, model, sparsity=0.5, iterations=2).json()["id"])
    assert job["status"] == "succeeded"
    job_id = job["id"]
    with client_for(service[0], KEYS["bob"]) as bob:
        routes = [("GET", f"/jobs/{job_id}"), ("POST", f"/jobs/{job_id}/cancel"),
                  ("DELETE", f"/jobs/{job_id}")]  # fmt: skip
        routes += [("GET", f"/jobs/{job_id}/{a}") for a in ("masks", "weights", "model", "report")]
        for method, path in routes:
            response = bob.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["type"] == "urn:synflow:problem:job_not_found"
        assert job_id not in {j["id"] for j in bob.get("/jobs").json()["items"]}
    # bob's attempts changed nothing
    assert alice.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
    assert alice.get(f"/jobs/{job_id}/masks").status_code == 200


def test_no_process_of_the_job_uids_is_left(service):
    from tests.service.harness import SANDBOX_UID_BASE

    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid = os.stat(entry).st_uid
            except FileNotFoundError:
                continue
            if SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + 16:
                left.append(entry.name)
    assert not left, f"processes of the job uids still running: {left}"
