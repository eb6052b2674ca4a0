"""torch.export `.pt2` programs through the engine: exact masks, a pruned program that
`torch.export.load` runs, and every hostile archive refused without running what it carries."""

from __future__ import annotations

import contextlib
import json
import math
import os
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from synflow.cli import main
from synflow.config import PruneConfig
from synflow.errors import InvalidModelError
from synflow.inputs import InputSpec
from synflow.io.formats import PT2, detect_format
from synflow.io.loader import load_model
from synflow.pipeline import prune_file
from tests.synflow.pt2_files import (
    TwoInputs,
    edit_json,
    export,
    marker_pickle,
    nodes,
    rewrite,
    small_convnet,
    weight_member,
)
from tests.synflow.test_onnx_bad_inputs import FifoWatch

SHAPE = (1, 3, 8, 8)
PROGRAM = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"


@pytest.fixture(scope="module")
def convnet_pt2(tmp_path_factory) -> Path:
    return export(small_convnet(), (torch.ones(SHAPE),), tmp_path_factory.mktemp("pt2") / "m.pt2")


def refused(path: Path, *words: str) -> str:
    with pytest.raises(InvalidModelError) as info:
        load_model(path)
    message = info.value.message
    for word in words:
        assert word in message, message
    return message


def check_pruned_program(out: Path, original: dict[str, torch.Tensor], shape) -> dict:
    """model.pt2 loads with torch.export.load and runs; its weights are the originals with zeros
    exactly where the masks say; weights.safetensors holds the same values."""
    masks = load_file(out / "masks.safetensors")
    weights = load_file(out / "weights.safetensors")
    program = torch.export.load(out / "model.pt2")
    state = program.state_dict
    assert set(state) == set(original) == set(weights)
    for key, value in original.items():
        expected = value * masks[key] if key in masks else value
        assert torch.equal(state[key], expected), key
        assert torch.equal(weights[key], expected), key
        if key in masks:
            assert torch.equal(state[key] != 0, masks[key]), key
    output = program.module()(torch.ones(shape))
    assert torch.isfinite(output).all()
    with zipfile.ZipFile(out / "model.pt2") as archive:  # weights as raw bytes, no pickle
        config = next(n for n in archive.namelist() if n.endswith(WEIGHTS_CONFIG))
        stored = json.loads(archive.read(config))["config"]
    assert set(stored) == set(original)
    assert all(meta["use_pickle"] is False for meta in stored.values())
    return masks


# --- real programs ------------------------------------------------------------------------------


def test_resnet18_cli_equals_torchscript_masks(tmp_path, capsys):
    """ResNet-18 (random init) as .pt2 through the CLI, with no --input-shape: the program states
    it. The masks equal those of the same model as TorchScript, bit for bit."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    shape = (1, 3, 32, 32)
    pt2 = export(model, (torch.ones(shape),), tmp_path / "resnet18.pt2")
    assert detect_format(pt2) == PT2
    out = tmp_path / "out"
    argv = ["prune", str(pt2), "--sparsity", "0.9", "--iterations", "3", "--out", str(out)]
    assert main(argv) == 0
    assert "kept 1,117,204 of 11,172,032 prunable weights" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "masks.safetensors",
        "model.pt2",
        "report.json",
        "report.png",
        "weights.safetensors",
    ]

    masks = check_pruned_program(out, model.state_dict(), shape)
    layers = [
        f"{name}.weight"
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    assert list(masks) == sorted(layers) or set(masks) == set(layers)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert total == sum(model.state_dict()[k].numel() for k in layers)
    assert total - kept == math.floor((1 - (1.0 - 0.9)) * total)
    report = json.loads((out / "report.json").read_text())
    assert report["input_shape"] == list(shape)
    assert report["artifacts"]["model"] == "model.pt2"

    scripted = tmp_path / "resnet18.pt"
    torch.jit.save(torch.jit.script(model), str(scripted))
    config = PruneConfig(sparsity=0.9, iterations=3, input_shape=shape)
    prune_file(scripted, config, tmp_path / "ts")
    reference = load_file(tmp_path / "ts" / "masks.safetensors")
    assert set(reference) == set(masks)
    for key, mask in reference.items():
        assert torch.equal(mask, masks[key]), key


def test_two_inputs_from_the_program(tmp_path, capsys):
    """forward(x, y): the program states both inputs, so the CLI needs none; the written program
    takes the same two inputs."""
    torch.manual_seed(1)
    model = TwoInputs().eval()
    pt2 = export(model, (torch.ones(2, 4), torch.ones(2, 6)), tmp_path / "two.pt2")
    loaded = load_model(pt2)
    assert loaded.inputs == (InputSpec((2, 4)), InputSpec((2, 6)))
    out = tmp_path / "out"
    argv = ["prune", str(pt2), "--sparsity", "0.75", "--iterations", "4", "--out", str(out)]
    assert main(argv) == 0
    total = 8 * 4 + 8 * 6 + 3 * 8
    pruned = math.floor((1 - (1.0 - 0.75)) * total)
    assert f"kept {total - pruned} of {total} prunable weights" in capsys.readouterr().out
    masks = load_file(out / "masks.safetensors")
    assert sorted(masks) == ["a.weight", "b.weight", "head.weight"]
    assert sum(int(m.sum()) for m in masks.values()) == total - pruned
    program = torch.export.load(out / "model.pt2")
    for key, mask in masks.items():
        assert torch.equal(program.state_dict[key], model.state_dict()[key] * mask), key
    assert program.module()(torch.ones(2, 4), torch.ones(2, 6)).shape == (2, 3)
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["kept"] == total - pruned


def test_int64_token_program(tmp_path):
    """A token model's program states an int64 input; it is fed ones of that dtype."""
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 6), torch.nn.Linear(6, 4)).eval()
    pt2 = export(model, (torch.ones(1, 5, dtype=torch.int64),), tmp_path / "tokens.pt2")
    assert load_model(pt2).inputs == (InputSpec((1, 5), "int64"),)
    report = prune_file(pt2, PruneConfig(sparsity=0.5, iterations=2), tmp_path / "out")
    assert report["totals"]["prunable"] == 24 and report["totals"]["pruned"] == 12
    program = torch.export.load(tmp_path / "out" / "model.pt2")
    masks = load_file(tmp_path / "out" / "masks.safetensors")
    assert torch.equal(program.state_dict["1.weight"] != 0, masks["1.weight"])
    assert program.module()(torch.ones(1, 5, dtype=torch.int64)).shape == (1, 5, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_program(tmp_path, dtype):
    """A float16 / bfloat16 program is pruned and written back in its own dtype."""
    model = small_convnet().to(dtype)
    pt2 = export(model, (torch.ones(SHAPE, dtype=dtype),), tmp_path / "half.pt2")
    assert load_model(pt2).inputs == (InputSpec(SHAPE, str(dtype).removeprefix("torch.")),)
    report = prune_file(pt2, PruneConfig(sparsity=0.5, iterations=2), tmp_path / "out")
    assert report["totals"]["pruned"] == math.floor(0.5 * (4 * 27 + 20))
    program = torch.export.load(tmp_path / "out" / "model.pt2")
    masks = load_file(tmp_path / "out" / "masks.safetensors")
    for key, mask in masks.items():
        assert program.state_dict[key].dtype == dtype
        assert torch.equal(program.state_dict[key], model.state_dict()[key] * mask), key
    assert program.module()(torch.ones(SHAPE, dtype=dtype)).dtype == dtype


def test_contradicting_inputs_refused(convnet_pt2, tmp_path, capsys):
    argv = ["prune", str(convnet_pt2), "--sparsity", "0.5", "--input-shape", "1,3,16,16"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "contradicts the model, which states 1,3,8,8" in err
    assert not (tmp_path / "out").exists()


def test_bias_and_norm_roles(convnet_pt2, tmp_path):
    """Biases and batch-norm parameters are prunable only when asked, found by their ops."""
    model = load_model(convnet_pt2)
    assert [t.key for t in model.prunable()] == ["0.weight", "5.weight"]
    found = {t.key: (t.layer_type, t.role) for t in model.prunable(True, True)}
    assert found == {
        "0.weight": ("Conv2d", "weight"),
        "0.bias": ("Conv2d", "bias"),
        "1.weight": ("BatchNorm", "norm_weight"),
        "1.bias": ("BatchNorm", "norm_bias"),
        "5.weight": ("Linear", "weight"),
        "5.bias": ("Linear", "bias"),
    }
    assert model.input_shape == SHAPE
    config = PruneConfig(sparsity=0.5, iterations=2, prune_bias=True, prune_batchnorm=True)
    report = prune_file(convnet_pt2, config, tmp_path / "out")
    assert report["totals"]["prunable"] == 4 * 27 + 4 + 4 + 4 + 20 + 5
    assert report["totals"]["pruned"] == math.floor(0.5 * report["totals"]["prunable"])
    check_pruned_program(tmp_path / "out", small_convnet().state_dict(), SHAPE)


def test_sample_inputs_are_never_read(convnet_pt2, tmp_path):
    """The sample inputs member is a pickle: a hostile one does not run, pruning still works."""
    marker = tmp_path / "marker"
    bad = rewrite(
        convnet_pt2,
        tmp_path / "bad.pt2",
        {"sample_inputs/model.pt": lambda _: marker_pickle(marker)},
    )
    report = prune_file(bad, PruneConfig(sparsity=0.5, iterations=1), tmp_path / "out")
    assert report["totals"]["pruned"] == math.floor(0.5 * (4 * 27 + 20))
    assert not marker.exists()
    torch.export.load(tmp_path / "out" / "model.pt2")  # our output carries no pickle to run
    assert not marker.exists()


# --- hostile archives -----------------------------------------------------------------------


def test_pickled_weight_refused_and_never_unpickled(convnet_pt2, tmp_path):
    marker = tmp_path / "marker"

    def pickled(value):
        value["config"]["0.weight"]["use_pickle"] = True

    bad = rewrite(
        convnet_pt2,
        tmp_path / "bad.pt2",
        {
            WEIGHTS_CONFIG: edit_json(pickled),
            weight_member(convnet_pt2, "0.weight"): lambda _: marker_pickle(marker),
        },
    )
    refused(bad, "'0.weight'", "pickle", "never loaded")
    assert not marker.exists()
    # the file is truly hostile: torch.export.load itself runs that pickle
    with contextlib.suppress(Exception):
        torch.export.load(bad)
    assert marker.exists()


def test_pickled_constant_refused(convnet_pt2, tmp_path):
    marker = tmp_path / "marker"

    def add_constant(value):
        value["config"]["evil"] = {
            "path_name": "custom_obj_0",
            "is_param": False,
            "use_pickle": True,
            "tensor_meta": None,
        }

    bad = rewrite(
        convnet_pt2,
        tmp_path / "bad.pt2",
        {
            CONSTANTS_CONFIG: edit_json(add_constant),
            "data/constants/custom_obj_0": lambda _: marker_pickle(marker),
        },
    )
    refused(bad, "'evil'", "pickle")
    assert not marker.exists()


def test_graph_names_a_missing_weight(convnet_pt2, tmp_path):
    bad = rewrite(
        convnet_pt2,
        tmp_path / "bad.pt2",
        {WEIGHTS_CONFIG: edit_json(lambda v: v["config"].pop("5.weight"))},
    )
    refused(bad, "weight '5.weight'", "does not hold")


def test_weight_stored_in_a_missing_member(convnet_pt2, tmp_path):
    def elsewhere(value):
        value["config"]["0.weight"]["path_name"] = "weight_99"

    bad = rewrite(convnet_pt2, tmp_path / "bad.pt2", {WEIGHTS_CONFIG: edit_json(elsewhere)})
    refused(bad, "'weight_99'", "does not hold")


def test_weight_path_outside_the_archive_is_not_opened(convnet_pt2, tmp_path):
    fifo = FifoWatch(tmp_path / "outside")

    def escape(value):
        value["config"]["0.weight"]["path_name"] = str(fifo.path)

    bad = rewrite(convnet_pt2, tmp_path / "bad.pt2", {WEIGHTS_CONFIG: edit_json(escape)})
    try:
        refused(bad, "not a plain name")
    finally:
        opened = fifo.stop()
    assert not opened


def test_truncated_weight_data(convnet_pt2, tmp_path):
    member = weight_member(convnet_pt2, "0.weight")
    bad = rewrite(convnet_pt2, tmp_path / "bad.pt2", {member: lambda data: data[:40]})
    refused(bad, "'0.weight'", "truncated")


def test_from_file_operator_refused_without_opening(convnet_pt2, tmp_path):
    """A node that would read a file (aten.from_file) is refused before anything runs."""
    fifo = FifoWatch(tmp_path / "secret")

    def read_secret(program):
        node = next(n for n in nodes(program) if "relu" in n["target"])
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [{"name": "filename", "arg": {"as_string": str(fifo.path)}, "kind": 1}]

    bad = rewrite(convnet_pt2, tmp_path / "bad.pt2", {PROGRAM: edit_json(read_secret)})
    try:
        refused(bad, "aten.from_file", "outside")
    finally:
        opened = fifo.stop()
    assert not opened


@pytest.mark.parametrize(
    "target", ["torch.os.system", "builtins.eval", "torch.ops.higher_order.cond", "#evil:op"]
)
def test_non_aten_targets_refused(convnet_pt2, tmp_path, target):
    def retarget(program):
        next(n for n in nodes(program) if "relu" in n["target"])["target"] = target

    bad = rewrite(convnet_pt2, tmp_path / "bad.pt2", {PROGRAM: edit_json(retarget)})
    refused(bad, "not an aten operator")


def test_sympy_expression_refused_and_never_evaluated(convnet_pt2, tmp_path):
    """torch parses symbolic sizes with sympy.sympify, which evaluates Python."""
    marker = tmp_path / "marker"
    code = f"__import__('os').system('touch {marker}')"

    def symbolic(program):
        values = program["graph_module"]["graph"]["tensor_values"]
        first = next(iter(values.values()))
        first["sizes"][0] = {"as_expr": {"expr_str": code, "hint": {"as_int": 1}}}

    bad = rewrite(convnet_pt2, tmp_path / "bad.pt2", {PROGRAM: edit_json(symbolic)})
    refused(bad, "symbolic")
    assert not marker.exists()
    with contextlib.suppress(Exception):  # proof: torch.export.load evaluates it
        torch.export.load(bad)
    assert marker.exists()


def test_guard_code_refused(convnet_pt2, tmp_path):
    """`ep.module()` compiles and runs `guards_code` strings as Python."""
    marker = tmp_path / "marker"

    def guard(program):
        program["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]

    bad = rewrite(convnet_pt2, tmp_path / "bad.pt2", {PROGRAM: edit_json(guard)})
    refused(bad, "guard code")
    assert not marker.exists()
    with contextlib.suppress(Exception):  # proof: torch runs it when the program is called
        torch.export.load(bad).module()(torch.ones(SHAPE))
    assert marker.exists()


def test_code_in_a_name_refused(convnet_pt2, tmp_path):
    """fx pastes placeholder names into generated source; a name must be a plain identifier."""

    def rename(program):
        specs = program["graph_module"]["signature"]["input_specs"]
        name = specs[-1]["user_input"]["arg"]["as_tensor"]["name"]
        text = json.dumps(program).replace(f'"{name}"', f"\"{name}=__import__('os').getpid()\"")
        program.clear()
        program.update(json.loads(text))

    bad = rewrite(convnet_pt2, tmp_path / "bad.pt2", {PROGRAM: edit_json(rename)})
    refused(bad, "not a plain name")


@pytest.mark.parametrize("kind", ["collections.defaultdict", "__enum__"])
def test_call_spec_types_refused(convnet_pt2, tmp_path, kind):
    """pytree specs can name modules to import and factories to call; only tuples, lists and
    dicts are accepted."""

    def spec(program):
        signature = program["graph_module"]["module_call_graph"][0]["signature"]
        tree = [1, {"type": kind, "context": "null", "children_spec": []}]
        if kind == "__enum__":
            context = json.dumps({"__enum__": True, "fqn": "os:system", "name": "x"})
            tree = [1, {"type": "builtins.tuple", "context": context, "children_spec": []}]
        signature["in_spec"] = json.dumps(tree)

    bad = rewrite(convnet_pt2, tmp_path / "bad.pt2", {PROGRAM: edit_json(spec)})
    refused(bad, "spec" if kind == "__enum__" else "container type")


@pytest.mark.parametrize(
    ("program", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"{not json", "not valid JSON"),
        (b'{"graph_module": []}', "no graph_module"),
        (b"[]", "not an object"),
    ],
)
def test_malformed_program_json(convnet_pt2, tmp_path, program, words):
    bad = rewrite(convnet_pt2, tmp_path / "bad.pt2", {PROGRAM: lambda _: program})
    refused(bad, words)


def test_dynamic_shapes_refused(tmp_path):
    dim = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(
        torch.nn.Linear(4, 3), (torch.ones(2, 4),), dynamic_shapes=({0: dim},)
    )
    torch.export.save(program, str(tmp_path / "dynamic.pt2"))
    refused(tmp_path / "dynamic.pt2", "static shapes")


def test_training_mode_export_refused(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    path = export(model, (torch.ones(2, 3, 8, 8),), tmp_path / "train.pt2")
    refused(path, "training mode", "model.eval()")


def test_cli_refusal_is_one_line(convnet_pt2, tmp_path, capsys):
    bad = rewrite(
        convnet_pt2,
        tmp_path / "bad.pt2",
        {WEIGHTS_CONFIG: edit_json(lambda v: v["config"].pop("0.weight"))},
    )
    argv = ["prune", str(bad), "--sparsity", "0.5", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synflow: error: ") and "\n" not in err and "'0.weight'" in err
    assert not os.path.exists(tmp_path / "out" / "model.pt2")
