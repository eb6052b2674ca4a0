"""Bad ONNX files through the engine: each a clear `SynflowError`, never a crash or a file read."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from synflow.config import PruneConfig
from synflow.errors import InvalidInputShapeError, InvalidModelError, SynflowError
from synflow.inputs import InputSpec
from synflow.io.limits import OnnxLimits
from synflow.io.loader import load_model
from synflow.io.onnx import load_onnx
from synflow.pipeline import prune_file

OPSET = 17


def linear_model(
    *,
    in_features: int = 4,
    input_type: int = TensorProto.FLOAT,
    input_shape: list | None = None,
    weight: TensorProto | None = None,
    opset: int = OPSET,
    extra_nodes: tuple = (),
    node_name: str = "fc",
) -> onnx.ModelProto:
    """x -> MatMul(W) -> Relu: the smallest prunable graph."""
    if weight is None:
        rng = np.random.default_rng(0)
        weight = numpy_helper.from_array(
            rng.standard_normal((in_features, 3)).astype(np.float32), "W"
        )
    shape = input_shape if input_shape is not None else [1, in_features]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name=node_name),
            helper.make_node("Relu", ["h"], ["y"], name="relu"),
            *extra_nodes,
        ],
        "g",
        [helper.make_tensor_value_info("x", input_type, shape)],
        [output("y")],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def output(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["d0", "d1"])


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def refused(path: Path, *words: str, error=InvalidModelError) -> str:
    """Loading `path` raises `error` (a SynflowError) whose message has all `words`."""
    with pytest.raises(error) as info:
        load_model(path)
    assert isinstance(info.value, SynflowError)
    message = info.value.message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


def test_a_valid_small_model_loads(tmp_path):
    """The base graph of the cases below is fine; each case breaks one thing."""
    model = load_model(save(linear_model(), tmp_path / "ok.onnx"))
    assert model.input_shape == (1, 4)
    assert [t.key for t in model.prunable()] == ["W"]


# --- not ONNX at all ---------------------------------------------------------------------------


@pytest.mark.parametrize("first", [None, 0x08, 0x12, 0x1A, 0x22, 0x3A, 0x42])
@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed, first):
    data = bytearray(np.random.default_rng(seed).bytes(4096))
    if first is not None:  # look like an ONNX file to the format sniffer
        data[0] = first
    elif data[0] in (0x08, 0x12, 0x1A, 0x22, 0x3A, 0x42, 0x50, 0x80):
        data[0] = 0xFF
    path = tmp_path / "random.onnx"
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidModelError) as info:
        load_model(path)
    assert "onnx" in info.value.message.lower() or "unrecognised" in info.value.message


def test_empty_file(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    refused(tmp_path / "empty.onnx", "empty")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated(tmp_path, fraction):
    data = linear_model(in_features=64).SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InvalidModelError) as info:
        load_model(path)
    assert "onnx" in info.value.message.lower()


# --- invalid graphs ----------------------------------------------------------------------------


def test_checker_failure_undefined_input(tmp_path):
    model = linear_model(extra_nodes=(helper.make_node("Relu", ["nowhere"], ["z"]),))
    refused(save(model, tmp_path / "bad.onnx"), "onnx.checker")


def test_checker_failure_declared_shape_larger_than_data(tmp_path):
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    weight.dims[:] = [4, 3000]
    refused(save(linear_model(weight=weight), tmp_path / "bad.onnx"), "onnx.checker", "W")


def test_declared_elements_over_limit(tmp_path):
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    weight.dims[:] = [100_000, 100_000]  # 40 GB declared, 48 bytes stored
    refused(save(linear_model(weight=weight), tmp_path / "bomb.onnx"), "limit")


def test_no_graph(tmp_path):
    model = onnx.ModelProto(ir_version=8)
    refused(save(model, tmp_path / "nograph.onnx"), "no graph")


# --- external data: refused, and the named file is never opened --------------------------------


class FifoWatch:
    """A FIFO that reports whether anything opened it for reading.

    Opening a FIFO for reading blocks until a writer comes; the watcher thread plays the writer
    whenever a reader is waiting (a non-blocking open for writing succeeds only then), so a
    loader that did open the path would be caught instead of hanging.
    """

    def __init__(self, path: Path):
        self.path = path
        os.mkfifo(path)
        self.opened = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader
                continue
            self.opened.set()
            os.close(fd)

    def stop(self) -> bool:
        self._stop.set()
        self._thread.join()
        return self.opened.is_set()


def external_weight(location: str) -> TensorProto:
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    return weight


@pytest.mark.parametrize("kind", ["relative", "parent", "absolute", "symlink"])
def test_external_data_refused_without_opening(tmp_path, kind):
    models = tmp_path / "models"
    models.mkdir()
    fifo = FifoWatch(tmp_path / "weights.bin")
    location = {
        "relative": "weights.bin",
        "parent": "../weights.bin",
        "absolute": str(fifo.path),
        "symlink": "link.bin",
    }[kind]
    if kind == "relative":
        (models / "weights.bin").symlink_to(fifo.path)
    if kind == "symlink":
        (models / "link.bin").symlink_to(fifo.path)
    path = save(linear_model(weight=external_weight(location)), models / "model.onnx")
    try:
        with pytest.raises(InvalidModelError) as info:
            prune_file(path, PruneConfig(sparsity=0.5, iterations=1), tmp_path / "out")
    finally:
        opened = fifo.stop()
    assert "external data" in info.value.message
    assert not opened, "the loader opened the file the model names"
    assert stat.S_ISFIFO(os.stat(fifo.path).st_mode)


def test_external_data_in_a_constant_node(tmp_path):
    value = helper.make_attribute("value", external_weight("/etc/passwd"))
    const = helper.make_node("Constant", [], ["c"])
    const.attribute.append(value)
    model = linear_model(extra_nodes=(const,))
    refused(save(model, tmp_path / "const.onnx"), "external data")


# --- what the converter cannot run -------------------------------------------------------------


def test_custom_domain(tmp_path):
    model = linear_model(extra_nodes=(helper.make_node("Evil", ["y"], ["z"], domain="com.evil"),))
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    refused(save(model, tmp_path / "custom.onnx"), "custom domain", "com.evil")


def test_standard_op_the_converter_lacks(tmp_path):
    square = helper.make_node("Reshape", ["y", "shape"], ["sq"])
    det = helper.make_node("Det", ["sq"], ["d"])
    model = linear_model(extra_nodes=(square, det))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 3], np.int64), "shape"))
    model.graph.output.append(output("d"))
    refused(save(model, tmp_path / "det.onnx"), "cannot run", "Det (opset 17)")


def test_new_behaviour_of_a_newer_opset(tmp_path):
    """Pad 18 gained an `axes` input that the converter cannot honour: named, not guessed."""
    pads = numpy_helper.from_array(np.array([1, 1], np.int64), "pads")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    pad = helper.make_node("Pad", ["y", "pads", "", "axes"], ["p"])
    model = linear_model(opset=18, extra_nodes=(pad,))
    model.graph.initializer.extend([pads, axes])
    model.graph.output[0].name = "p"
    refused(save(model, tmp_path / "pad.onnx"), "Pad", "axes")


def test_control_flow(tmp_path):
    branch = helper.make_graph(
        [helper.make_node("Identity", ["y"], ["b"])],
        "branch",
        [],
        [output("b")],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch)
    model = linear_model(extra_nodes=(node,))
    model.graph.initializer.append(cond)
    model.graph.output[0].name = "z"
    refused(save(model, tmp_path / "if.onnx"), "control flow")


def test_local_functions(tmp_path):
    function = helper.make_function(
        "local",
        "Twice",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", OPSET)],
    )
    model = linear_model(extra_nodes=(helper.make_node("Twice", ["y"], ["z"], domain="local"),))
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local", 1))
    refused(save(model, tmp_path / "functions.onnx"), "functions")


# --- inputs ------------------------------------------------------------------------------------


def test_integer_input_is_stated_and_fed_ones(tmp_path):
    model = linear_model(input_type=TensorProto.INT64)
    model.graph.node.insert(0, helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
    model.graph.node[1].input[0] = "xf"
    path = save(model, tmp_path / "int.onnx")
    assert load_model(path).inputs == (InputSpec((1, 4), "int64"),)
    report = prune_file(path, PruneConfig(sparsity=0.5, iterations=2), tmp_path / "out")
    assert report["inputs"] == ["int64:1,4"] and report["totals"]["kept"] == 6
    assert any("integer inputs (int64:1,4) were fed all ones" in w for w in report["warnings"])


def test_input_type_the_engine_cannot_feed(tmp_path):
    refused(save(linear_model(input_type=TensorProto.COMPLEX64), tmp_path / "c.onnx"), "COMPLEX64")


def test_two_inputs_are_stated_in_order(tmp_path):
    model = linear_model()
    model.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 3]))
    model.graph.node[1].input[0] = "h2"
    model.graph.node.insert(1, helper.make_node("Add", ["h", "x2"], ["h2"], name="add"))
    path = save(model, tmp_path / "two.onnx")
    assert load_model(path).inputs == (InputSpec((1, 4)), InputSpec((1, 3)))
    report = prune_file(path, PruneConfig(sparsity=0.5, iterations=2), tmp_path / "out")
    assert report["inputs"] == ["1,4", "1,3"] and report["totals"]["kept"] == 6


def test_dynamic_batch_becomes_one(tmp_path):
    model = load_model(save(linear_model(input_shape=["batch", 4]), tmp_path / "dyn.onnx"))
    assert model.input_shape == (1, 4)


def test_dynamic_feature_dimension_needs_input_shape(tmp_path):
    path = save(linear_model(input_shape=["batch", "features"]), tmp_path / "dyn.onnx")
    assert load_model(path).input_shape is None
    with pytest.raises(InvalidInputShapeError) as info:
        prune_file(path, PruneConfig(sparsity=0.5, iterations=2), tmp_path / "out")
    assert "input_shape" in info.value.message
    report = prune_file(
        path, PruneConfig(sparsity=0.5, iterations=2, input_shape=(1, 4)), tmp_path / "out"
    )
    assert report["input_shape"] == [1, 4]


# --- limits ------------------------------------------------------------------------------------


def test_limits(tmp_path):
    path = save(linear_model(in_features=64), tmp_path / "model.onnx")
    size = path.stat().st_size
    with pytest.raises(InvalidModelError, match="bytes, over the limit"):
        load_onnx(path, OnnxLimits(max_file_bytes=size - 1))
    with pytest.raises(InvalidModelError, match="2 nodes, over the limit of 1"):
        load_onnx(path, OnnxLimits(max_nodes=1))
    with pytest.raises(InvalidModelError, match="initializers, over the limit"):
        load_onnx(path, OnnxLimits(max_initializers=0))
    with pytest.raises(InvalidModelError, match="elements"):
        load_onnx(path, OnnxLimits(max_elements=64 * 3 - 1))
    assert load_onnx(path, OnnxLimits(max_file_bytes=size, max_nodes=2, max_elements=192))


# --- code injection through node names (issue 6) -----------------------------------------------


def injected_model(marker: Path) -> onnx.ModelProto:
    """A node name that torch.fx would paste into generated Python as code that runs a shell."""
    assert "." not in str(marker)  # onnx2torch replaces dots in names
    payload = (
        'relu"),getattr(__import__("os"),"system")("touch ' + str(marker) + '"),getattr(self,"relu'
    )
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "W"], ["y"], name=payload),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)  # the checker accepts the name
    return model


@pytest.fixture
def marker_dir(tmp_path: Path):
    """A dot-free folder for the marker (onnx2torch turns dots in node names into slashes)."""
    folder = Path("/tmp") / f"synflow_marker_{os.getpid()}_{tmp_path.name.replace('.', '_')}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder)


def test_node_name_injection_payload_is_real(marker_dir):
    """The payload does run through plain onnx2torch, so the next test shows a real defence."""
    from onnx2torch import convert

    marker = marker_dir / "plain_onnx2torch"
    module = convert(injected_model(marker))
    with pytest.raises(TypeError):
        module(torch.ones(1, 4))
    assert marker.exists()


def test_node_name_injection_never_executes(tmp_path, marker_dir):
    marker = marker_dir / "synflow"
    path = save(injected_model(marker), tmp_path / "evil.onnx")
    report = prune_file(path, PruneConfig(sparsity=0.5, iterations=3), tmp_path / "out")
    assert not marker.exists()
    assert report["totals"]["pruned"] == 6
    pruned = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert pruned.graph.node[1].name == injected_model(marker).graph.node[1].name  # kept as given
    assert not marker.exists()


# --- torch.export archives ---------------------------------------------------------------------


def test_torch_export_archive_refused(tmp_path):
    program = torch.export.export(torch.nn.Linear(4, 3), (torch.ones(1, 4),))
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    refused(path, "torch.export", "pickle", "onnx")


def test_conv_weight_computed_at_run_time(tmp_path):
    """onnx2torch needs Conv weights as initializers; a computed one is named, not a crash."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("Neg", ["W"], ["Wn"]),
            helper.make_node("Conv", ["x", "Wn"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [output("y")],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    refused(save(model, tmp_path / "computed.onnx"), "Wn", "constant initializer")
