"""Each mistake a user can make answered on one line that says what to fix, exit code exactly 2,
and no empty `--out` folder left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from synflow.cli import main
from tests.synflow import nets

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (1, 3, 8, 8)


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit code 2 and exactly one line on stderr; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synflow: error: ") and "\n" not in err, err
    return err


def _prune(path: Path, out: Path, *flags: str) -> list[str]:
    return ["prune", str(path), "--out", str(out), "--sparsity", "0.5", "--iterations", "2",
            *flags]  # fmt: skip


@pytest.fixture(scope="module")
def rescnn_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("m") / "rescnn.pt"
    torch.jit.save(torch.jit.script(nets.seeded(nets.ResCNN, seed=3).eval()), str(path))
    return path


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 2)).eval()  # fmt: skip


def test_frozen_torchscript(tmp_path, capsys):
    path = tmp_path / "frozen.pt"
    torch.jit.save(torch.jit.freeze(torch.jit.script(_small())), str(path))
    err = _error(capsys, _prune(path, tmp_path / "out", "--input-shape", "1,3,8,8"))
    assert "frozen (torch.jit.freeze)" in err and "without freezing" in err
    assert "preserved_attrs" in err
    assert not (tmp_path / "out").exists()


def test_freezing_with_preserved_attrs_keeps_those_layers_prunable(tmp_path, capsys):
    """The advice works: the preserved layers are parameters again once saved and loaded."""
    path = tmp_path / "preserved.pt"
    frozen = torch.jit.freeze(torch.jit.script(_small()), preserved_attrs=["0", "4"])
    torch.jit.save(frozen, str(path))
    assert main(_prune(path, tmp_path / "out", "--input-shape", "1,3,8,8")) == 0
    assert set(load_file(tmp_path / "out" / "masks.safetensors")) == {"0.weight", "4.weight"}


@pytest.mark.parametrize("how", ["script", "trace"])
def test_quantized_model(tmp_path, capsys, how):
    float_model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(float_model, {nn.Linear}, torch.qint8)
        exported = (torch.jit.script(quantized) if how == "script"
                    else torch.jit.trace(quantized, torch.ones(1, 4)))  # fmt: skip
    path = tmp_path / "quantized.pt"
    torch.jit.save(exported, str(path))
    err = _error(capsys, _prune(path, tmp_path / "out", "--input-shape", "1,4"))
    assert "quantized weights" in err and "cannot be pruned" in err
    assert "Prune the float model first, then quantize" in err
    assert not (tmp_path / "out").exists()


def test_cuda_without_a_gpu(tmp_path, capsys, rescnn_path):
    if torch.cuda.is_available():  # a GPU machine: ask for one past the last
        count = torch.cuda.device_count()
        device, needle = f"cuda:{count}", f"does not exist: this machine has {count} CUDA GPU"
    else:
        device, needle = "cuda", "has none that torch can use (torch.cuda.is_available() is False)"
    err = _error(capsys, _prune(rescnn_path, tmp_path / "out", "--input-shape", "1,3,8,8",
                                "--device", device))  # fmt: skip
    assert needle in err
    assert not (tmp_path / "out").exists()


def test_unknown_device(tmp_path, capsys, rescnn_path):
    err = _error(capsys, _prune(rescnn_path, tmp_path / "out", "--input-shape", "1,3,8,8",
                                "--device", "gpu"))  # fmt: skip
    assert "unknown device 'gpu'" in err and "cpu" in err


@pytest.mark.parametrize("method", ["synflow", "magnitude"])
def test_missing_batch_dimension(tmp_path, capsys, rescnn_path, method):
    err = _error(capsys, _prune(rescnn_path, tmp_path / "out", "--input-shape", "3,8,8",
                                "--method", method))  # fmt: skip
    assert "rejected an input of shape [3, 8, 8]" in err
    assert "batch dimension is missing" in err and "1,3,8,8" in err
    assert "files and the network" not in err
    assert not (tmp_path / "out").exists()


def test_missing_batch_dimension_of_several_inputs(tmp_path, capsys):
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(5, 4)

        def forward(self, x, y):
            return self.bn(self.conv(x)).mean((2, 3)) + self.fc(y)

    path = tmp_path / "pair.pt"
    torch.jit.save(torch.jit.script(Pair().eval()), str(path))
    err = _error(capsys, _prune(path, tmp_path / "out", "--input", "3,8,8", "--input", "5"))
    assert "batch dimension is missing" in err and "1,3,8,8 1,5" in err


def test_a_shape_that_is_wrong_anyway_is_not_called_a_missing_batch(tmp_path, capsys, rescnn_path):
    err = _error(capsys, _prune(rescnn_path, tmp_path / "out", "--input-shape", "5,8,8"))
    assert "rejected an input of shape [5, 8, 8]" in err and "batch dimension" not in err


def test_exclude_that_matches_nothing(tmp_path, capsys, rescnn_path):
    err = _error(capsys, _prune(rescnn_path, tmp_path / "out", "--input-shape", "1,3,8,8",
                                "--exclude", "fc.*,nope.*"))  # fmt: skip
    assert "exclude pattern 'nope.*' matches no prunable parameter" in err
    assert "stem.weight" in err  # the names it could have matched
    assert not (tmp_path / "out").exists()


def test_exclude_splits_at_the_comma_as_the_http_field(tmp_path, rescnn_path):
    out = tmp_path / "out"
    argv = _prune(rescnn_path, out, "--input-shape", "1,3,8,8", "--exclude", "fc.*, stem.*",
                  "--exclude", "block1.conv1.*")  # fmt: skip
    assert main(argv) == 0
    masks = load_file(out / "masks.safetensors")
    for name in ("fc.weight", "stem.weight", "block1.conv1.weight"):
        assert name not in masks
    assert "block2.conv1.weight" in masks


def test_a_failed_run_keeps_a_folder_that_existed(tmp_path, capsys, rescnn_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _error(capsys, _prune(rescnn_path, out, "--input-shape", "3,8,8"))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    nested = tmp_path / "a" / "b" / "c"
    _error(capsys, _prune(rescnn_path, nested, "--input-shape", "3,8,8"))
    assert not (tmp_path / "a").exists()  # every folder the run created is gone


def test_remote_cli_on_an_unreachable_service(tmp_path, rescnn_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for argv in (
        ["status", "some-job"],
        ["submit", str(rescnn_path), "--sparsity", "0.5", "--input-shape", "1,3,8,8"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "synflow", *argv, "--url", f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip()
        assert "Traceback" not in err and "\n" not in err, err
        assert f"cannot reach the service at http://127.0.0.1:{port}" in err
        assert "synflow serve" in err


def test_quantized_onnx_model(tmp_path, capsys):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_path, quantized_path = tmp_path / "float.onnx", tmp_path / "quantized.onnx"
    float_model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(float_model, (torch.ones(1, 4),), str(float_path), dynamo=False)
    quantize_dynamic(str(float_path), str(quantized_path), weight_type=QuantType.QInt8)
    err = _error(capsys, _prune(quantized_path, tmp_path / "out"))
    assert "quantized model (DynamicQuantizeLinear, MatMulInteger)" in err
    assert "Prune the float model first, then quantize" in err
    assert not (tmp_path / "out").exists()
