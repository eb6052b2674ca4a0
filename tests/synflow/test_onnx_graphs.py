"""ONNX graph shapes beyond the exporter matrix: shared initializers, Gemm orientation and
scaling, ConvTranspose, normalisation flags, newer opsets."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from torch import nn

from synflow.config import PruneConfig
from synflow.pipeline import MASKS, WEIGHTS, prune_file
from tests.synflow.onnx_nets import build, export, initializers, twin_torchscript


def prune_both(onnx_path, twin_path, config, out):
    prune_file(onnx_path, config, out / "onnx")
    shape = config.input_shape or tuple(onnx_input_shape(onnx_path))
    prune_file(twin_path, config.model_copy(update={"input_shape": shape}), out / "ts")
    return load_file(str(out / "onnx" / MASKS)), load_file(str(out / "ts" / MASKS))


def onnx_input_shape(path):
    (feed,) = onnx.load(str(path)).graph.input
    return [d.dim_value or 1 for d in feed.type.tensor_type.shape.dim]


def run_onnxruntime(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path))
    return session.run(None, {session.get_inputs()[0].name: x})[0]


class TiedMLP(nn.Module):
    """One Linear applied twice: a single tensor that feeds two layers."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


def test_deduplicated_initializer_is_one_tied_tensor(tmp_path):
    """The legacy exporter stores two equal Linear weights once and reads the copy through an
    Identity node. The engine prunes that initializer as one tensor used by both layers: its
    mask is the one torch gives a weight shared by two layers, and the written graph keeps the
    Identity nodes."""
    torch.manual_seed(0)
    twins = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)).eval()
    with torch.no_grad():
        twins[2].weight.copy_(twins[0].weight)
        twins[2].bias.copy_(twins[0].bias)
    path = export(twins, torch.ones(1, 16), tmp_path / "tied.onnx", "legacy17")
    graph = onnx.load(str(path)).graph
    assert [t.name for t in graph.initializer] == ["0.weight", "0.bias"]
    assert [n.op_type for n in graph.node].count("Identity") == 2

    tied = TiedMLP().eval()
    with torch.no_grad():
        tied.fc.weight.copy_(twins[0].weight)
        tied.fc.bias.copy_(twins[0].bias)
    twin = tmp_path / "tied.pt"
    torch.jit.save(torch.jit.trace(tied, torch.ones(1, 16)), str(twin))
    config = PruneConfig(sparsity=0.8, iterations=5)
    onnx_masks, ts_masks = prune_both(path, twin, config, tmp_path)
    assert list(onnx_masks) == ["0.weight"]
    np.testing.assert_array_equal(onnx_masks["0.weight"], ts_masks["fc.weight"])

    pruned = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    assert list(pruned.graph.node) == list(graph.node)
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    w = numpy_helper.to_array(pruned.graph.initializer[0])
    np.testing.assert_array_equal(
        w, np.where(onnx_masks["0.weight"], twins[0].weight.detach().numpy(), 0)
    )
    b = twins[0].bias.detach().numpy()
    expected = np.maximum(x @ w.T + b, 0) @ w.T + b
    np.testing.assert_allclose(
        run_onnxruntime(tmp_path / "onnx" / "model.onnx", x), expected, rtol=1e-5, atol=1e-5
    )


def gemm_model(alpha: float, trans_b: int, rng) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    w1 = rng.standard_normal((12, 8) if trans_b else (8, 12)).astype(np.float32)
    b1 = rng.standard_normal(12).astype(np.float32)
    w2 = rng.standard_normal((12, 5)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], alpha=alpha, transB=trans_b),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "W2"], ["y"]),  # transB=0, no bias
        ],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [
            numpy_helper.from_array(w1, "W1"),
            numpy_helper.from_array(b1, "B1"),
            numpy_helper.from_array(w2, "W2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model, w1, w2


@pytest.mark.parametrize(("alpha", "trans_b"), [(1.0, 1), (1.0, 0), (0.5, 0), (0.25, 1)])
def test_gemm_orientation_and_alpha(tmp_path, alpha, trans_b):
    """Masks and weights have the initializer's shape, (in, out) for transB=0, and alpha does
    not leak into the published values; the masks equal torch's for the same network."""
    model, w1, w2 = gemm_model(alpha, trans_b, np.random.default_rng(1))
    path = tmp_path / "gemm.onnx"
    path.write_bytes(model.SerializeToString())

    net = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 5, bias=False)).eval()
    with torch.no_grad():  # power-of-two alphas keep the scaled weights exact
        net[0].weight.copy_(torch.from_numpy(alpha * (w1 if trans_b else w1.T)))
        net[0].bias.copy_(torch.from_numpy(initializers_of(model)["B1"].copy()))
        net[2].weight.copy_(torch.from_numpy(w2.T))
    twin = tmp_path / "gemm.pt"
    torch.jit.save(torch.jit.trace(net, torch.ones(1, 8)), str(twin))
    config = PruneConfig(sparsity=0.7, iterations=4)
    onnx_masks, ts_masks = prune_both(path, twin, config, tmp_path)
    report = json.loads((tmp_path / "onnx" / "report.json").read_text())
    assert [r["flops_dense"] for r in report["layers"]] == [2 * 8 * 12, 2 * 12 * 5]

    assert onnx_masks["W1"].shape == w1.shape and onnx_masks["W2"].shape == (12, 5)
    np.testing.assert_array_equal(
        onnx_masks["W1"], ts_masks["0.weight"] if trans_b else ts_masks["0.weight"].T
    )
    np.testing.assert_array_equal(onnx_masks["W2"], ts_masks["2.weight"].T)
    weights = load_file(str(tmp_path / "onnx" / WEIGHTS))
    np.testing.assert_array_equal(weights["W1"], np.where(onnx_masks["W1"], w1, 0))
    pruned = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    assert list(pruned.graph.node) == list(model.graph.node)
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    with torch.no_grad():
        for p, key in ((net[0].weight, "0.weight"), (net[2].weight, "2.weight")):
            p.mul_(torch.from_numpy(ts_masks[key]))
        expected = net(torch.from_numpy(x)).numpy()
    got = run_onnxruntime(tmp_path / "onnx" / "model.onnx", x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def initializers_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize(
    ("prune_bias", "prune_batchnorm"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_convtranspose_and_normalisation_flags(tmp_path, prune_bias, prune_batchnorm):
    """An unfolded BatchNormalization (legacy exporter, training=PRESERVE) and a ConvTranspose:
    the same tensors are prunable as for TorchScript under each flag, with the same masks."""
    model = build("convnet")
    example = torch.ones(1, 3, 16, 16)
    path = export(model, example, tmp_path / "convnet.onnx", "legacy17", fold=False)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    twin, keys = twin_torchscript(model, path, example, tmp_path, fold=False)
    config = PruneConfig(
        sparsity=0.6, iterations=3, prune_bias=prune_bias, prune_batchnorm=prune_batchnorm
    )
    onnx_masks, ts_masks = prune_both(path, twin, config, tmp_path)
    assert sorted(onnx_masks) == sorted(keys[k] for k in ts_masks)
    for key, mask in ts_masks.items():
        np.testing.assert_array_equal(onnx_masks[keys[key]], mask, err_msg=key)
    stored = initializers(path)
    assert onnx_masks[keys["3.weight"]].shape == stored[keys["3.weight"]].shape == (8, 4, 2, 2)


@pytest.mark.parametrize("opset", [18, 21, 23])
def test_newer_opsets_from_the_dynamo_exporter(tmp_path, opset):
    """Opsets where onnx2torch alone rejects Identity / Reshape / ReduceMean / Conv versions."""
    model = build("convnet")
    example = torch.ones(1, 3, 16, 16)
    path = tmp_path / "convnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, external_data=False, opset_version=opset
        )
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == opset
    twin, keys = twin_torchscript(model, path, example, tmp_path)
    onnx_masks, ts_masks = prune_both(path, twin, PruneConfig(sparsity=0.9, iterations=5), tmp_path)
    for key, mask in ts_masks.items():
        np.testing.assert_array_equal(onnx_masks[keys[key]], mask, err_msg=key)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert np.isfinite(run_onnxruntime(tmp_path / "onnx" / "model.onnx", x)).all()


def test_identity_at_opset_21_on_activations(tmp_path):
    """A hand-written opset-21 graph with Identity on an activation (not an initializer)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Identity", ["h"], ["i"]),
            helper.make_node("Relu", ["i"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    path = tmp_path / "identity21.onnx"
    path.write_bytes(model.SerializeToString())
    report = prune_file(path, PruneConfig(sparsity=0.5, iterations=2), tmp_path / "out")
    assert report["totals"]["pruned"] == 12
    assert report["layers"][0]["flops_dense"] == 2 * 24
