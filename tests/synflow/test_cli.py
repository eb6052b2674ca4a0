"""`synflow prune` end to end, and each bad input answered with one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synflow.cli import main
from synflow.io.atomic import FILE_MODE
from tests.e2e.checks import check_report_png
from tests.synflow import nets

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (1, 3, 8, 8)


def _save(module: torch.nn.Module, path: Path, how: str) -> Path:
    module = module.eval()
    scripted = (
        torch.jit.script(module) if how == "script" else torch.jit.trace(module, torch.ones(SHAPE))
    )
    torch.jit.save(scripted, str(path))
    return path


@pytest.fixture(scope="module")
def rescnn():
    return nets.randomize_batchnorm(nets.seeded(nets.ResCNN, seed=21))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_cli_prunes_and_writes_the_artifacts(tmp_path, rescnn, how):
    model_path = _save(rescnn, tmp_path / "model.pt", how)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "synflow", "prune", str(model_path), "--sparsity", "0.9",
         "--input-shape", "1,3,8,8", "--iterations", "20", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "prunable weights (sparsity 0.8998" in proc.stdout
    assert "FutureWarning" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "masks.safetensors", "model.pt", "report.json", "report.png", "weights.safetensors"
    ]  # fmt: skip
    # one mode for every artifact, whatever wrote it (synflow/io/atomic.py)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == dict.fromkeys(
        (p.name for p in out.iterdir()), FILE_MODE
    )

    original = {k: v for k, v in rescnn.state_dict().items()}
    masks = load_file(out / "masks.safetensors")
    weights = load_file(out / "weights.safetensors")
    report = json.loads((out / "report.json").read_text())

    prunable = {n for n, p in rescnn.named_parameters() if p.dim() > 1}
    assert set(masks) == prunable
    assert all(m.dtype == torch.bool and m.shape == original[k].shape for k, m in masks.items())
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert total - kept == int(0.9 * total)
    assert set(weights) == set(original)
    for name, value in original.items():
        expected = value * masks[name] if name in masks else value
        assert torch.equal(weights[name], expected), name

    pruned = torch.jit.load(str(out / "model.pt"))
    for name, value in pruned.state_dict().items():
        assert torch.equal(value, weights[name]), name
    y = pruned(torch.randn(2, 3, 8, 8))
    assert y.shape == (2, 10) and torch.isfinite(y).all()

    assert report["totals"]["prunable"] == total and report["totals"]["kept"] == kept
    assert {r["name"] for r in report["layers"]} == prunable
    for row in report["layers"]:
        assert row["kept"] == int(masks[row["name"]].sum())
    assert 0 < report["flops"]["pruned"] < report["flops"]["dense"]
    assert report["config"]["iterations"] == 20 and report["config"]["method"] == "synflow"
    assert report["timing"]["wall_seconds"] > 0
    assert report["precision"] == "float32"
    assert report["scale"] is None and report["precision_note"] is None
    check_report_png(out / "report.png", len(report["layers"]))


def test_report_flags_collapsed_layers(tmp_path):
    model = nets.seeded(nets.mlp, bias=False, widths=(8, 64, 8, 64, 8, 64, 8, 4))
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    out = tmp_path / "out"
    code = main(["prune", str(path), "--compression", "100", "--input-shape", "1,8",
                 "--method", "magnitude", "--out", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    masks = load_file(out / "masks.safetensors")
    emptied = [name for name, m in masks.items() if not m.any()]
    assert "2.weight" in emptied
    assert sorted(report["collapsed_layers"]) == sorted(emptied)
    assert any("layer collapse: 2.weight" in w for w in report["warnings"])


def _run_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith("synflow: error: ")
    return err


def _args(model, out, *extra):
    return ["prune", str(model), "--out", str(out), *extra]


@pytest.fixture
def small_model(tmp_path):
    return _save(nets.seeded(nets.plain_cnn), tmp_path / "small.pt", "script")


def test_random_bytes(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(4096).replace(b"\x08", b"\x00")[:4096] + b"x")
    bad.write_bytes(b"\x01\x02" + bad.read_bytes())
    err = _run_error(
        capsys, _args(bad, tmp_path / "o", "--sparsity", "0.5", "--input-shape", "1,3,8,8")
    )
    assert "unrecognised model file" in err


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_save_pickle_is_refused_and_never_unpickled(tmp_path, capsys, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "pickled.pt"
    torch.save({"model": _Exploit(marker)}, str(path), _use_new_zipfile_serialization=not legacy)
    err = _run_error(
        capsys, _args(path, tmp_path / "o", "--sparsity", "0.5", "--input-shape", "1,3")
    )
    assert "pickle" in err and "torch.jit" in err
    assert not marker.exists()


def test_truncated_archive(tmp_path, capsys, small_model):
    data = small_model.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    err = _run_error(
        capsys, _args(cut, tmp_path / "o", "--sparsity", "0.5", "--input-shape", "1,3,8,8")
    )
    assert "truncated" in err or "cannot be read" in err


def test_zip_that_is_not_torchscript(tmp_path, capsys):
    path = tmp_path / "notes.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    err = _run_error(
        capsys, _args(path, tmp_path / "o", "--sparsity", "0.5", "--input-shape", "1,3")
    )
    assert "not a TorchScript model" in err


def test_input_shape_the_model_rejects(tmp_path, capsys, small_model):
    err = _run_error(
        capsys, _args(small_model, tmp_path / "o", "--sparsity", "0.5", "--input-shape", "1,5,8,8")
    )
    assert "rejected an input of shape [1, 5, 8, 8]" in err


def test_missing_input_shape(tmp_path, capsys, small_model):
    err = _run_error(capsys, _args(small_model, tmp_path / "o", "--sparsity", "0.5"))
    assert "input_shape is required" in err


def test_no_prunable_parameters(tmp_path, capsys):
    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.s = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.s

    path = tmp_path / "scale.pt"
    torch.jit.save(torch.jit.script(Scale()), str(path))
    err = _run_error(
        capsys, _args(path, tmp_path / "o", "--sparsity", "0.5", "--input-shape", "1,3")
    )
    assert "no prunable parameters" in err


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--sparsity", "1.0"], "sparsity"),
        (["--sparsity", "-0.1"], "sparsity"),
        (["--compression", "0.5"], "compression"),
        (["--sparsity", "0.5", "--compression", "2"], "exactly one"),
        ([], "exactly one"),
        (["--sparsity", "0.5", "--method", "optimal-brain-damage"], "unknown method"),
        (["--sparsity", "0.5", "--input-shape", "1,a"], "input_shape"),
    ],
)
def test_bad_settings(tmp_path, capsys, small_model, flags, needle):
    err = _run_error(capsys, _args(small_model, tmp_path / "o", "--input-shape", "1,3,8,8", *flags))
    assert needle in err


def test_missing_file(tmp_path, capsys):
    err = _run_error(capsys, _args(tmp_path / "nope.pt", tmp_path / "o", "--sparsity", "0.5"))
    assert "no such file" in err


def test_degenerate_flow(tmp_path, capsys):
    model = nets.seeded(nets.mlp)
    with torch.no_grad():
        model[-1].weight.zero_()
    path = tmp_path / "zero_head.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    err = _run_error(
        capsys, _args(path, tmp_path / "o", "--sparsity", "0.5", "--input-shape", "1,20")
    )
    assert "synaptic flow is zero" in err and "4.weight" in err
    assert not (tmp_path / "o" / "masks.safetensors").exists()


def test_forward_failure_that_is_not_about_the_shape(tmp_path, capsys):
    class Fails(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            if bool(x.sum() > 0):
                raise RuntimeError("permission denied: /secret")
            return self.fc(x)

    path = tmp_path / "fails.pt"
    torch.jit.save(torch.jit.script(Fails()), str(path))
    err = _run_error(
        capsys, _args(path, tmp_path / "o", "--sparsity", "0.5", "--input-shape", "1,3")
    )
    assert "failed when run on an all-ones input of shape [1, 3]" in err
    assert "rejected an input" not in err
