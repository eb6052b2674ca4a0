"""float16 and bfloat16 models: scored in float32 (or float64), masks equal to the reference's on
the same values in float32, and the pruned model written back in its own dtype."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import synflow
from synflow.cli import main
from synflow.errors import InvalidModelError
from synflow.io.torchscript import read_torchscript
from tests.synflow import reference
from tests.synflow.input_nets import half_model

SHAPE = (1, 3, 8, 8)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _save(module: torch.nn.Module, path: Path, how: str, dtype: torch.dtype) -> Path:
    example = torch.ones(SHAPE, dtype=dtype)
    scripted = torch.jit.script(module) if how == "script" else torch.jit.trace(module, example)
    torch.jit.save(scripted, str(path))
    return path


def _check_written(out: Path, module: torch.nn.Module, dtype: torch.dtype, expected: dict):
    masks = load_file(out / "masks.safetensors")
    weights = load_file(out / "weights.safetensors")
    assert set(masks) == set(expected)
    original = module.state_dict()
    for name, mask in expected.items():
        assert masks[name].dtype == torch.bool and torch.equal(masks[name], mask), name
        assert weights[name].dtype == dtype
        assert torch.equal(weights[name] == 0, ~mask | (original[name] == 0)), name
        assert torch.equal(weights[name][mask], original[name][mask]), name  # values kept
    pruned = read_torchscript(out / "model.pt").module
    state = pruned.state_dict()
    assert {str(v.dtype) for v in state.values() if v.is_floating_point()} == {str(dtype)}
    for name in expected:
        assert torch.equal(state[name], weights[name]), name
    y = pruned(torch.ones(SHAPE, dtype=dtype))
    assert y.dtype == dtype and y.shape == (1, 10) and bool(torch.isfinite(y).all())
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("name", sorted(DTYPES))
def test_half_models_prune_and_keep_their_dtype(tmp_path, name, how):
    dtype = DTYPES[name]
    module = half_model(dtype)
    path = _save(module, tmp_path / "m.pt", how, dtype)
    out = tmp_path / "out"
    assert main(["prune", str(path), "--out", str(out), "--sparsity", "0.9",
                 "--iterations", "5", "--input-shape", "1,3,8,8"]) == 0  # fmt: skip
    # the scorer linearises the float32 copy of the same values: the reference on module.float()
    expected = reference.reference_synflow(half_model(dtype).float(), SHAPE, 0.1, 5)
    report = _check_written(out, module, dtype, expected)
    total = report["totals"]["prunable"]
    assert total == sum(m.numel() for m in expected.values())
    assert report["totals"]["kept"] == total - math.floor(0.9 * total)
    assert report["precision"] == "float32" and report["flops"]["pruned"] > 0


def test_float64_scoring_of_a_float16half_model(tmp_path):
    dtype = torch.float16
    module = half_model(dtype)
    path = _save(module, tmp_path / "m.pt", "script", dtype)
    out = tmp_path / "out"
    assert main(["prune", str(path), "--out", str(out), "--compression", "10", "--iterations",
                 "3", "--input-shape", "1,3,8,8", "--precision", "float64"]) == 0  # fmt: skip
    names = reference.prunable_names(module)
    masks = {n: torch.ones_like(module.state_dict()[n], dtype=torch.bool) for n in names}
    for t in range(1, 4):
        scores, _ = reference.synflow_scores(
            half_model(dtype).double(), masks, SHAPE, torch.float64
        )
        masks = reference.select_exact(scores, masks, 0.1 ** (t / 3))
    report = _check_written(out, module, dtype, masks)
    assert report["precision"] == "float64"


def test_magnitude_on_bfloat16_ranks_the_weights_themselves(tmp_path):
    dtype = torch.bfloat16
    module = half_model(dtype)
    path = _save(module, tmp_path / "m.pt", "script", dtype)
    out = tmp_path / "out"
    assert main(["prune", str(path), "--out", str(out), "--sparsity", "0.5",
                 "--method", "magnitude", "--input-shape", "1,3,8,8"]) == 0  # fmt: skip
    names = reference.prunable_names(module)
    state = module.state_dict()
    scores = {n: state[n].float().abs() for n in names}
    masks = {n: torch.ones_like(state[n], dtype=torch.bool) for n in names}
    expected = reference.select_exact(scores, masks, 0.5)
    report = _check_written(out, module, dtype, expected)
    assert report["flops"]["pruned"] > 0


def test_float16_onnx_is_written_back_in_float16(tmp_path):
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    torch.manual_seed(4)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 6 * 6, 2)).eval()  # fmt: skip
    path = tmp_path / "half.onnx"
    example = (torch.ones(SHAPE, dtype=torch.float16),)
    torch.onnx.export(module.half(), example, str(path), dynamo=False)
    out = tmp_path / "out"
    assert main(["prune", str(path), "--out", str(out), "--sparsity", "0.5",
                 "--iterations", "2"]) == 0  # fmt: skip
    expected = reference.reference_synflow(module.float(), SHAPE, 0.5, 2)
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"] == ["float16:1,3,8,8"]
    total = report["totals"]["prunable"]
    assert total == 4 * 27 + 2 * 144 and report["totals"]["kept"] == total - math.floor(total / 2)
    masks = load_file(out / "masks.safetensors")
    written = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(out / "model.onnx").graph.initializer
    }
    for name, mask in expected.items():
        assert torch.equal(masks[name], mask), name
        assert written[name].dtype == np.float16
        assert np.array_equal(written[name] == 0, ~mask.numpy()), name
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    (y,) = session.run(None, {session.get_inputs()[0].name: np.ones(SHAPE, np.float16)})
    assert y.dtype == np.float16 and y.shape == (1, 2)


def test_a_bfloat16_onnx_graph_is_refused_with_what_to_do(tmp_path):
    """onnx2torch cannot read bfloat16 initializers: say so, and name the formats that work."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model = model.eval().to(torch.bfloat16)
    path = tmp_path / "bf16.onnx"
    torch.onnx.export(model, (torch.ones(1, 4, dtype=torch.bfloat16),), str(path), dynamo=False)
    with pytest.raises(InvalidModelError, match="bfloat16 ONNX graphs are not supported"):
        synflow.load_model(path)
