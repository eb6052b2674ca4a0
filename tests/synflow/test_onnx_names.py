"""Readable ONNX names: the masks' metadata and the report name, for each initializer key (kept as
the key), the node that uses it and its op type, as the file names them, the same on every run."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from safetensors import safe_open

from synflow.config import PruneConfig
from synflow.pipeline import MASKS, NODES_METADATA, prune_file
from tests.synflow.onnx_nets import build, export

CONFIG = PruneConfig(sparsity=0.8, iterations=3)
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def reference_nodes(path: Path) -> dict[str, list[tuple[str, str]]]:
    """initializer -> every (node name, op type) of a weight op that takes it as an input,
    directly or through an Identity node that forwards it, in graph order."""
    graph = onnx.load(str(path)).graph
    stored = {t.name for t in graph.initializer}
    forwards = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    users: dict[str, list[tuple[str, str]]] = {}
    for index, node in enumerate(graph.node):
        if node.op_type not in WEIGHT_OPS:
            continue
        for name in node.input:
            source = forwards.get(name, name)
            if source in stored:
                users.setdefault(source, []).append((node.name or f"node_{index}", node.op_type))
    return users


def names_of(out: Path) -> tuple[dict, list[dict], set[str]]:
    with safe_open(str(out / MASKS), "pt") as masks:
        metadata = json.loads(masks.metadata()[NODES_METADATA])
        keys = set(masks.keys())
    report = json.loads((out / "report.json").read_text())
    return metadata, report["layers"], keys


@pytest.mark.parametrize("exporter", ["legacy17", "dynamo"])
def test_masks_and_report_name_the_node_of_each_initializer(tmp_path, exporter):
    model = build("resnet18" if exporter == "legacy17" else "convnet")
    onnx_path = export(model, torch.ones(1, 3, 32, 32), tmp_path / "m.onnx", exporter)
    prune_file(onnx_path, CONFIG, tmp_path / "a")
    prune_file(onnx_path, CONFIG, tmp_path / "b")
    metadata, layers, keys = names_of(tmp_path / "a")

    assert set(metadata) == keys  # every mask, under its initializer key
    users = reference_nodes(onnx_path)
    for key, named in metadata.items():
        assert (named["node"], named["op_type"]) == users[key][0], key  # the first user
    assert {row["name"]: {"node": row["node"], "op_type": row["op_type"]} for row in layers} == (
        metadata
    )
    # the exporters name their nodes; those names (not generated ones) are what is reported
    file_names = {n.name for n in onnx.load(str(onnx_path)).graph.node if n.name}
    assert all(n["node"] in file_names for n in metadata.values()), metadata
    if exporter == "legacy17":  # BatchNorm folded into Conv: keys the exporter made up
        assert any(key.startswith("onnx::Conv_") for key in metadata)

    again, layers_again, _ = names_of(tmp_path / "b")  # stable across runs
    assert again == metadata and layers_again == layers


def test_torchscript_masks_carry_no_node_names(tmp_path):
    model = torch.jit.script(build("convnet").eval())
    path = tmp_path / "m.pt"
    torch.jit.save(model, str(path))
    prune_file(path, CONFIG.model_copy(update={"input_shape": (1, 3, 8, 8)}), tmp_path / "out")
    with safe_open(str(tmp_path / "out" / MASKS), "pt") as masks:
        assert NODES_METADATA not in (masks.metadata() or {})
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert all("node" not in row for row in report["layers"])


def test_unnamed_nodes_are_named_by_their_index(tmp_path):
    """Node names are optional in ONNX: a node without one is `node_<index in the file>`."""
    path = export(build("convnet"), torch.ones(1, 3, 8, 8), tmp_path / "m.onnx", "legacy17")
    graph = onnx.load(str(path))
    for node in graph.graph.node:
        node.name = ""
    onnx.save(graph, str(path))
    prune_file(path, CONFIG, tmp_path / "out")
    metadata, _, keys = names_of(tmp_path / "out")
    users = reference_nodes(path)
    assert set(metadata) == keys
    for key, named in metadata.items():
        assert named["node"].startswith("node_")
        assert (named["node"], named["op_type"]) == users[key][0], key
