"""Input specs: parsing, the config's two spellings, and models with several or integer inputs
pruned through the CLI with masks equal to the reference's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn

from synflow.cli import main
from synflow.config import PruneConfig
from synflow.errors import InvalidInputShapeError
from synflow.feed import resolve_inputs
from synflow.inputs import InputSpec, format_input_spec, parse_input_spec, parse_input_specs
from synflow.io.torchscript import read_torchscript
from tests.synflow import reference
from tests.synflow.input_nets import Tokens, TwoInputs, linearised_twin

# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("1,3,224,224", InputSpec((1, 3, 224, 224))),
        ("int64:1,128", InputSpec((1, 128), "int64")),
        ("float16:2x4", InputSpec((2, 4), "float16")),
        (" bf16 : 1, 8 ", InputSpec((1, 8), "bfloat16")),
        ("torch.long:1,5", InputSpec((1, 5), "int64")),
        ("bool:1,5", InputSpec((1, 5), "bool")),
    ],
)
def test_parse(text, spec):
    assert parse_input_spec(text) == spec
    assert parse_input_spec(format_input_spec(spec)) == spec


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("int65:1,2", "unknown input dtype 'int65'"),
        ("int64:", "has no shape"),
        ("1,0,3", "below 1"),
        ("1,a", "integers separated by commas"),
        ("float32:1,-2", "below 1"),
        ("1,65536,65536", "more than"),
    ],
)
def test_parse_errors_say_what_is_wrong(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_input_spec(text)


def test_every_spelling_of_a_list():
    specs = (InputSpec((1, 128), "int64"), InputSpec((1, 3)))
    assert parse_input_specs(["int64:1,128", "1,3"]) == specs
    assert parse_input_specs('["int64:1,128", [1, 3]]') == specs
    assert parse_input_specs([{"shape": [1, 128], "dtype": "int64"}, {"shape": [1, 3]}]) == specs
    assert parse_input_specs("int64:1,128") == specs[:1]
    with pytest.raises(ValueError, match='needs "shape"'):
        parse_input_specs([{"dtype": "int64"}])


def test_config_takes_inputs_or_input_shape_not_both():
    assert PruneConfig(sparsity=0.5, input_shape="1,3").input_specs == (InputSpec((1, 3)),)
    config = PruneConfig(sparsity=0.5, inputs=["int64:1,4", "1,3"])
    assert config.input_specs == (InputSpec((1, 4), "int64"), InputSpec((1, 3)))
    assert config.normalized()["inputs"] == ["int64:1,4", "1,3"]
    stored = {k: v for k, v in config.normalized().items() if k in PruneConfig.model_fields}
    assert PruneConfig.model_validate(stored).input_specs == config.input_specs  # the worker's
    assert PruneConfig.model_validate(config.model_dump(mode="json")) == config  # remote CLI's
    assert PruneConfig(sparsity=0.5).input_specs is None
    with pytest.raises(ValidationError, match="not both"):
        PruneConfig(sparsity=0.5, input_shape="1,3", inputs=["1,3"])
    with pytest.raises(ValidationError, match="unknown input dtype"):
        PruneConfig(sparsity=0.5, inputs=["complex:1,3"])


def test_a_contradicting_spec_is_refused_and_a_free_batch_may_change():
    from synflow.model import LoadedModel

    stated = LoadedModel("onnx", nn.Linear(2, 2), Path("m.onnx"), inputs=(InputSpec((1, 4)),),
                         free_axes=(frozenset({0}),))  # fmt: skip
    ask = PruneConfig(sparsity=0.5, input_shape="8,4")
    assert resolve_inputs(stated, ask) == (InputSpec((8, 4)),)
    assert resolve_inputs(stated, PruneConfig(sparsity=0.5)) == (InputSpec((1, 4)),)
    for given, needle in [
        ("1,5", "size 5 at axis 1 where the model takes 4"),
        ("int64:1,4", "dtype int64 where the model takes float32"),
        ("1,4,1", "3 dimensions where the model takes 2"),
    ]:
        with pytest.raises(InvalidInputShapeError, match=needle):
            resolve_inputs(stated, PruneConfig(sparsity=0.5, inputs=[given]))
    with pytest.raises(InvalidInputShapeError, match="takes 1 input"):
        resolve_inputs(stated, PruneConfig(sparsity=0.5, inputs=["1,4", "1,4"]))


# --- models ------------------------------------------------------------------------------------


def _save(module: nn.Module, path: Path, how: str, example: tuple) -> Path:
    torch.manual_seed(0)
    module = module.eval()
    scripted = torch.jit.script(module) if how == "script" else torch.jit.trace(module, example)
    torch.jit.save(scripted, str(path))
    return path


def _cli(model: Path, out: Path, *flags: str) -> int:
    return main(["prune", str(model), "--out", str(out), *flags])


def _check_outputs(out: Path, module: nn.Module, expected: dict, example: tuple):
    masks = load_file(out / "masks.safetensors")
    weights = load_file(out / "weights.safetensors")
    assert set(masks) == set(expected)
    for name, mask in expected.items():
        assert torch.equal(masks[name], mask), name
        assert torch.equal(weights[name] == 0, ~mask | (module.state_dict()[name] == 0))
    pruned = read_torchscript(out / "model.pt").module
    state = pruned.state_dict()
    for name in expected:
        assert torch.equal(state[name] == 0, weights[name] == 0)
    assert pruned(*example).shape == module(*example).shape
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("how", ["script", "trace"])
def test_two_inputs_through_the_cli(tmp_path, how):
    torch.manual_seed(1)
    module = TwoInputs().eval()
    example = (torch.ones(2, 6), torch.ones(2, 4))
    path = _save(module, tmp_path / "two.pt", how, example)
    code = _cli(path, tmp_path / "out", "--sparsity", "0.8", "--iterations", "5",
                "--input", "2,6", "--input", "float32:2,4")  # fmt: skip
    assert code == 0
    expected = reference.reference_synflow(module, [((2, 6), "float32"), ((2, 4), "float32")],
                                           0.2, 5)  # fmt: skip
    report = _check_outputs(tmp_path / "out", module, expected, example)
    total = 6 * 8 + 4 * 8 + 8 * 3
    assert report["totals"]["prunable"] == total
    assert report["totals"]["kept"] == total - int((1 - 0.2) * total)
    assert report["inputs"] == ["2,6", "2,4"] and report["input_shape"] is None
    assert report["flops"]["dense"] == 2 * 2 * total  # two rows, each weight used once per row
    assert not any("integer inputs" in w for w in report["warnings"])


@pytest.mark.parametrize("how", ["script", "trace"])
def test_int64_token_model_through_the_cli(tmp_path, capsys, how):
    torch.manual_seed(2)
    module = Tokens().eval()
    example = (torch.ones(1, 7, dtype=torch.int64),)
    path = _save(module, tmp_path / "tokens.pt", how, example)
    code = _cli(path, tmp_path / "out", "--compression", "4", "--iterations", "4",
                "--input", "int64:1,7")  # fmt: skip
    assert code == 0
    expected = reference.reference_synflow(linearised_twin(module), [((1, 7), "int64")], 0.25, 4)
    report = _check_outputs(tmp_path / "out", module, expected, example)
    total = 16 * 24 + 24 * 5
    assert set(expected) == {"fc1.weight", "fc2.weight"}
    assert report["totals"]["kept"] == total - int(0.75 * total)
    assert report["inputs"] == ["int64:1,7"]
    assert report["flops"]["dense"] == 2 * 7 * total
    assert "integer inputs (int64:1,7) were fed all ones" in capsys.readouterr().err


def test_a_float_input_for_a_token_model_fails_clearly(tmp_path, capsys):
    path = _save(Tokens(), tmp_path / "tokens.pt", "script", ())
    assert _cli(path, tmp_path / "out", "--sparsity", "0.5", "--input-shape", "1,7") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synflow: error: the model ") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_an_onnx_token_model_states_its_int64_input(tmp_path, capsys):
    torch.manual_seed(3)
    path = tmp_path / "tokens.onnx"
    torch.onnx.export(Tokens().eval(), (torch.ones(1, 7, dtype=torch.int64),), str(path),
                      dynamo=False)  # fmt: skip
    assert _cli(path, tmp_path / "out", "--sparsity", "0.5", "--iterations", "2") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    total = 16 * 24 + 24 * 5
    assert report["inputs"] == ["int64:1,7"] and report["totals"]["prunable"] == total
    assert report["totals"]["kept"] == total // 2
    capsys.readouterr()
    # a spec that contradicts the file's own is refused, saying what the model takes
    assert _cli(path, tmp_path / "o2", "--sparsity", "0.5", "--input-shape", "1,7") == 2
    err = capsys.readouterr().err
    assert "dtype float32 where the model takes int64" in err and "Give int64:1,7" in err
    assert not (tmp_path / "o2").exists()
