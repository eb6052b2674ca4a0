"""Real exporter output through the engine: prune at sparsity 0.9, check the written .onnx.

Each network is exported once per session by the legacy exporter at opsets 13 and 17 and by the
dynamo exporter at its default opset, pruned from the .onnx file, and compared with its
TorchScript twin (the same folded network with the same numbers, see `onnx_nets`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from safetensors.numpy import load_file

from synflow.config import PruneConfig
from synflow.pipeline import MASKS, REPORT, WEIGHTS, prune_file
from tests.synflow.onnx_nets import IMAGE, build, export, initializers, twin_torchscript

EXPORTERS = ("legacy13", "legacy17", "dynamo")
NETWORKS = {  # name -> input of one batch
    "resnet18": IMAGE,
    "mobilenet_v3_small": IMAGE,
    "vgg11_bn": IMAGE,
    "mlp": (1, 20),  # Gemm form
    "mlp_matmul": (1, 4, 20),  # a 3-d input makes the exporters write MatMul + Add
}
CONFIG = PruneConfig(sparsity=0.9, iterations=5)

pytestmark = pytest.mark.slow  # about 2-3 minutes on two CPU cores, most of it ResNet-18 and VGG


@dataclass
class Case:
    name: str
    exporter: str
    onnx_path: Path
    out: Path  # ONNX prune artifacts
    twin_out: Path  # TorchScript twin's prune artifacts
    twin_keys: dict[str, str]  # TorchScript key -> initializer name
    report: dict


@pytest.fixture(
    scope="session",
    params=[(n, e) for n in NETWORKS for e in EXPORTERS],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def case(request, tmp_path_factory) -> Case:
    name, exporter = request.param
    work = tmp_path_factory.mktemp(f"{name}-{exporter}")
    model = build(name.removesuffix("_matmul"))
    example = torch.ones(NETWORKS[name])
    onnx_path = export(model, example, work / "model.onnx", exporter)
    report = prune_file(onnx_path, CONFIG, work / "onnx")
    twin, keys = twin_torchscript(model, onnx_path, example, work)
    prune_file(twin, CONFIG.model_copy(update={"input_shape": NETWORKS[name]}), work / "ts")
    return Case(name, exporter, onnx_path, work / "onnx", work / "ts", keys, report)


def test_graph_form(case: Case):
    """The exporters wrote what the case claims to cover."""
    model = onnx.load(str(case.onnx_path))
    ops = {n.op_type for n in model.graph.node}
    opset = {o.domain: o.version for o in model.opset_import}[""]
    if case.exporter.startswith("legacy"):
        assert opset == int(case.exporter.removeprefix("legacy"))
    else:
        assert opset >= 18
    if case.name == "mlp_matmul":
        assert "MatMul" in ops and "Gemm" not in ops
    elif case.name == "mlp":
        assert "Gemm" in ops
    else:
        assert "Conv" in ops and "BatchNormalization" not in ops  # folded by the exporter


def test_pruned_onnx_is_the_uploaded_graph(case: Case):
    original = onnx.load(str(case.onnx_path))
    pruned = onnx.load(str(case.out / "model.onnx"))
    onnx.checker.check_model(pruned, full_check=True)
    assert list(pruned.graph.node) == list(original.graph.node)
    assert list(pruned.graph.input) == list(original.graph.input)
    assert list(pruned.graph.output) == list(original.graph.output)
    assert list(pruned.opset_import) == list(original.opset_import)
    assert list(pruned.metadata_props) == list(original.metadata_props)
    assert (pruned.ir_version, pruned.producer_name) == (
        original.ir_version,
        original.producer_name,
    )
    assert [t.name for t in pruned.graph.initializer] == [
        t.name for t in original.graph.initializer
    ]


def test_pruned_onnx_runs_in_onnxruntime(case: Case):
    session = ort.InferenceSession(str(case.out / "model.onnx"))
    (feed,) = session.get_inputs()
    x = np.random.default_rng(0).standard_normal(NETWORKS[case.name]).astype(np.float32)
    outputs = session.run(None, {feed.name: x})
    assert all(np.isfinite(o).all() for o in outputs)


def test_only_pruned_entries_are_zeroed(case: Case):
    masks = load_file(str(case.out / MASKS))
    weights = load_file(str(case.out / WEIGHTS))
    before = initializers(case.onnx_path)
    after = initializers(case.out / "model.onnx")
    assert masks, "nothing was pruned"
    for name, mask in masks.items():
        assert mask.dtype == np.bool_ and mask.shape == before[name].shape
        np.testing.assert_array_equal(after[name], np.where(mask, before[name], 0))
        np.testing.assert_array_equal(weights[name], after[name])
        assert ((after[name] != 0) == mask).all() or (before[name][mask] == 0).any()
    for name in before.keys() - masks.keys():
        np.testing.assert_array_equal(after[name], before[name])


def test_masks_equal_torchscript_twin(case: Case):
    onnx_masks = load_file(str(case.out / MASKS))
    twin_masks = load_file(str(case.twin_out / MASKS))
    assert len(onnx_masks) == len(twin_masks)
    for key, twin_mask in twin_masks.items():
        mask = onnx_masks[case.twin_keys[key]]
        if case.name == "mlp_matmul":  # MatMul stores the (in, out) matrix
            mask = mask.T
        np.testing.assert_array_equal(mask, twin_mask, err_msg=key)


def test_report(case: Case):
    report = json.loads((case.out / REPORT).read_text())
    assert report == json.loads(json.dumps(case.report))
    assert report["format"] == "onnx"
    assert report["input_shape"] == [1, *NETWORKS[case.name][1:]]
    totals = report["totals"]
    assert totals["pruned"] == math.floor((1 - CONFIG.density) * totals["prunable"])
    assert report["flops"]["pruned"] < report["flops"]["dense"]
    assert all("flops_dense" in row for row in report["layers"]), report["warnings"]
    twin = json.loads((case.twin_out / REPORT).read_text())
    assert report["flops"]["dense"] == twin["flops"]["dense"]
    assert report["flops"]["pruned"] == twin["flops"]["pruned"]


def test_initializer_shapes_of_published_tensors(case: Case):
    """Weights keyed by initializer name with the initializer's shape (MatMul: (in, out))."""
    stored = {t.name: tuple(t.dims) for t in onnx.load(str(case.onnx_path)).graph.initializer}
    weights = load_file(str(case.out / WEIGHTS))
    assert weights.keys() <= stored.keys()
    for name, value in weights.items():
        assert value.shape == stored[name]
    if case.name == "mlp_matmul":
        shapes = [
            numpy_helper.to_array(t).shape for t in onnx.load(str(case.onnx_path)).graph.initializer
        ]
        assert (20, 32) in shapes and all(w.shape != (32, 20) for w in weights.values())
