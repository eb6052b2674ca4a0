"""Calibration files: the bounded header check, the engine's and the CLI's clear refusals."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from synflow.calibration import Calibration, load_calibration
from synflow.cli import main
from synflow.config import PruneConfig
from synflow.engine import prune
from synflow.errors import CalibrationError
from synflow.io.calibration import inspect_calibration
from synflow.io.limits import CalibrationLimits
from synflow.model import LoadedModel


def write(path: Path, **tensors: torch.Tensor) -> Path:
    save_file(tensors, str(path))
    return path


def raw_file(path: Path, header: object, data: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_a_valid_file_is_described_without_loading_it(tmp_path):
    path = write(tmp_path / "c.safetensors", inputs=torch.zeros(5, 1, 8, 8),
                 labels=torch.zeros(5, dtype=torch.int64))  # fmt: skip
    info = inspect_calibration(path)
    assert (info.samples, info.input_shape, info.input_dtype) == (5, (5, 1, 8, 8), "float32")
    assert info.has_labels and info.spec.shape == (1, 1, 8, 8)
    loaded = load_calibration(path)
    assert loaded.inputs.shape == (5, 1, 8, 8) and loaded.labels.dtype == torch.int64


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.write_bytes(b"PK\x03\x04 not safetensors at all"), "header length"),
        (lambda p: p.write_bytes(b"\x01\x02"), "shorter than"),
        (lambda p: raw_file(p, ["a list"]), "not a JSON object"),
        (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{{{{"), "not JSON"),
        (lambda p: write(p, labels=torch.zeros(3, dtype=torch.int64)), "no `inputs`"),
        (lambda p: write(p, inputs=torch.zeros(3, 4), extra=torch.zeros(1)), "other than"),
        (lambda p: write(p, inputs=torch.zeros(3, 4, dtype=torch.bool)), "dtype BOOL"),
        (lambda p: write(p, inputs=torch.zeros(12)), "at least 2 dimensions"),
        (lambda p: write(p, inputs=torch.zeros(3, 4), labels=torch.zeros(3)), "integer class"),
        (lambda p: write(p, inputs=torch.zeros(3, 4), labels=torch.zeros(2, dtype=torch.int64)),
         "one class index per sample"),
        (lambda p: raw_file(p, {"inputs": {"dtype": "F32", "shape": [2, 2],
                                           "data_offsets": [0, 16]}}, b"\0" * 8), "take 16 bytes"),
        (lambda p: raw_file(p, {"inputs": {"dtype": "F32", "shape": [2, 2],
                                           "data_offsets": [0, 12]}}, b"\0" * 12), "byte range"),
    ],
)  # fmt: skip
def test_malformed_files_are_refused_with_what_to_do(tmp_path, make, words):
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(CalibrationError) as info:
        inspect_calibration(path)
    assert words in info.value.message
    assert "save_file" in info.value.message or "samples" in info.value.message


def test_the_limits_hold(tmp_path):
    path = write(tmp_path / "c.safetensors", inputs=torch.zeros(40, 4))
    with pytest.raises(CalibrationError, match="over the limit"):
        inspect_calibration(path, CalibrationLimits(max_file_bytes=100))
    with pytest.raises(CalibrationError, match="between 1 and 10"):
        inspect_calibration(path, CalibrationLimits(max_samples=10))
    with pytest.raises(CalibrationError, match="implausible"):
        inspect_calibration(path, CalibrationLimits(max_header_bytes=8))


def classifier() -> LoadedModel:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return LoadedModel(format="torchscript", module=module, source=Path("<memory>"))


def cal(n=6, shape=(1, 4, 4), labels=True, classes=3) -> Calibration:
    y = torch.arange(n) % classes if labels else None
    return Calibration(torch.rand(n, *shape), y)


@pytest.mark.parametrize(
    ("method", "data", "config", "words"),
    [
        ("snip", None, {}, "give a calibration file"),
        ("grasp", None, {"input_shape": (1, 1, 4, 4)}, "give a calibration file"),
        ("synflow", cal(), {"input_shape": (1, 1, 4, 4)}, "data-free"),
        ("magnitude", cal(), {}, "data-free"),
        ("snip", cal(labels=False), {}, "needs `labels`"),
        ("snip", cal(shape=(1, 5, 5)), {"input_shape": (1, 1, 4, 4)}, "give inputs of shape"),
        ("grasp", cal(classes=7), {}, "class indices in [0, 3)"),
    ],
)
def test_the_engine_says_what_is_wrong_with_the_data(method, data, config, words):
    with pytest.raises(CalibrationError) as info:
        prune(classifier(), PruneConfig(sparsity=0.5, method=method, **config), calibration=data)
    assert words in info.value.message


def test_the_batch_sets_the_inputs_when_nothing_else_does():
    result = prune(classifier(), PruneConfig(sparsity=0.5, method="snip"), calibration=cal())
    assert result.inputs[0].shape == (1, 1, 4, 4) and result.discovery == "ops"


def test_cli_prunes_with_a_calibration_file_and_refuses_without(tmp_path, capsys):
    model = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(classifier().module.eval()), str(model))
    data = write(tmp_path / "c.safetensors", inputs=torch.rand(6, 1, 4, 4),
                 labels=torch.arange(6) % 3)  # fmt: skip
    out = tmp_path / "out"
    assert main(["prune", str(model), "--method", "snip", "--compression", "4",
                 "--calibration", str(data), "--out", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["kept"] == 152 - int(0.75 * 152)
    assert main(["prune", str(model), "--method", "grasp", "--sparsity", "0.5",
                 "--out", str(tmp_path / "no")]) == 2  # fmt: skip
    assert "give a calibration file" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
